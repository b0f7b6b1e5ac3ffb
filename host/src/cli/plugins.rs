//! `wasq plugins list|check|inspect`.

use super::GlobalArgs;
use crate::runtime::plugins::{PluginCode, PluginSources};
use crate::runtime::{LimitSettings, Runtime, limits::Bytes};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every plugin: built-in ones and plugins/NAME.wasm.
    List,
    /// Compile plugins and check them against the processor world.
    Check {
        /// Names or .wasm paths; all plugins if none.
        plugins: Vec<String>,
    },
    /// Hash, imports, exports, limits and grants of one plugin.
    Inspect { plugin: String },
}

fn source_line(code: &PluginCode) -> String {
    match &code.manifest {
        Some(_) => format!("{} (with manifest)", code.source),
        None => code.source.to_string(),
    }
}

pub async fn plugins(command: PluginsCommand, global: &GlobalArgs) -> anyhow::Result<bool> {
    let sources = PluginSources::in_dir(global.plugins_dir());
    let runtime = Runtime::new(global.engine())?;
    match command {
        PluginsCommand::List => {
            for code in sources.discover()? {
                let verdict = match runtime.inspect(&code) {
                    Ok(seen) => match seen.fits {
                        Ok(world) => format!("ok  sha256:{} {world}", &seen.sha256[..16]),
                        Err(_) => "fits neither processor world (see `wasq plugins check`)".into(),
                    },
                    Err(_) => "not a valid component (see `wasq plugins check`)".into(),
                };
                println!("{:<16} {:<48} {verdict}", code.name, source_line(&code));
            }
            Ok(true)
        }
        PluginsCommand::Check { plugins: wanted } => {
            let codes = if wanted.is_empty() {
                sources.discover()?
            } else {
                wanted
                    .iter()
                    .map(|w| sources.find(w))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let mut all_good = true;
            for code in codes {
                let problem = match runtime.inspect(&code) {
                    Ok(seen) => seen.fits.err(),
                    Err(err) => Some(format!("{err:#}")),
                };
                match problem {
                    None => println!("ok    {} ({})", code.name, source_line(&code)),
                    Some(why) => {
                        all_good = false;
                        let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
                        println!("FAIL  {} ({}): {why}", code.name, source_line(&code));
                    }
                }
            }
            Ok(all_good)
        }
        PluginsCommand::Inspect { plugin } => {
            let code = sources.find(&plugin)?;
            let seen = runtime.inspect(&code)?;
            let limits = code.limits(&LimitSettings::default())?;
            println!("name:     {}", code.name);
            println!("source:   {}", source_line(&code));
            println!("sha256:   {}", seen.sha256);
            println!("size:     {} bytes", seen.size);
            match &seen.fits {
                Ok(world) => println!("fits:     the {world} world"),
                Err(why) => println!("fits:     NO: {why}"),
            }
            println!("imports:");
            for name in &seen.imports {
                println!("  {name}");
            }
            println!("exports:");
            for name in &seen.exports {
                println!("  {name}");
            }
            println!(
                "limits:   memory {}, timeout {}, bytes read {}, bytes written {}, fuel {} (bindings may set their own)",
                Bytes(limits.memory),
                humantime::format_duration(limits.timeout),
                Bytes(limits.bytes_read),
                Bytes(limits.bytes_written),
                limits
                    .fuel
                    .map_or_else(|| "not counted".to_string(), |fuel| fuel.to_string())
            );
            let list = |prefixes: &[crate::runtime::grants::Prefix]| {
                if prefixes.is_empty() {
                    "nothing".to_string()
                } else {
                    prefixes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            println!("read:     {}", list(&seen.grants.read));
            println!("write:    {}", list(&seen.grants.write));
            match &seen.grants.tables {
                crate::runtime::grants::Tables::Only(tables) if tables.is_empty() => {
                    println!("tables:   none")
                }
                crate::runtime::grants::Tables::Only(tables) => {
                    println!("tables:   {}", tables.join(", "))
                }
                crate::runtime::grants::Tables::Every => println!("tables:   every table"),
            }
            println!(
                "replaces: {}",
                if seen.grants.overwrite {
                    "existing objects may be replaced"
                } else {
                    "never an existing object"
                }
            );
            if let Some(origin) = &code.manifest_origin {
                println!("manifest: {origin}");
            }
            let config = code.config(&Default::default());
            if !config.is_empty() {
                println!("config:");
                for (key, value) in config {
                    println!("  {key} = {value}");
                }
            }
            Ok(seen.fits.is_ok())
        }
    }
}
