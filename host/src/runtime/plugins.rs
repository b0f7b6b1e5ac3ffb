//! Where processors come from: built into the binary (the default
//! `compress`), or `plugins/NAME.wasm`, which adds a processor or replaces a
//! built-in one of the same name.

use super::bindings::ProcessorPre;
use super::bindings::batch::BatchProcessorPre;
use super::grants::Grants;
use super::limits::{LimitSettings, Limits};
use super::state::HostState;
use crate::filter::Filters;
use anyhow::Context as _;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The processors compiled into wasq.
pub const BUILT_IN: &[(&str, &[u8])] = &[(
    "compress",
    include_bytes!(concat!(env!("OUT_DIR"), "/compress.wasm")),
)];

/// Where a plugin's code came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::BuiltIn => write!(f, "built-in"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A processor ready to run: compiled, linked, with its limits and settings.
pub struct Plugin {
    name: Arc<str>,
    source: PluginSource,
    pub(super) pre: Pre,
    pub(super) limits: Limits,
    pub(super) config: Arc<BTreeMap<String, String>>,
    pub(super) grants: Arc<Grants>,
    /// Where its grants came from; `None` when it has no manifest.
    manifest_origin: Option<String>,
    /// What it is: its code's hash, and its imports and exports by name.
    identity: Arc<Identity>,
    /// The messages its manifest admits (all, without filters); a
    /// binding's own filters replace them.
    filters: Arc<Filters>,
}

/// A plugin's code, ready to instantiate, by the world it fits.
#[derive(Clone)]
pub(super) enum Pre {
    /// `processor`: `handle`, one message per instance.
    Single(ProcessorPre<HostState>),
    /// `batch-processor`: `handle-batch`, one batch per instance.
    Batch(BatchProcessorPre<HostState>),
}

/// A plugin's code as the console and `wasq plugins inspect` show it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// BLAKE3 of the component, hex (`b3sum` prints the same).
    pub blake3: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl Plugin {
    pub(super) fn new(
        name: &str,
        source: PluginSource,
        pre: Pre,
        limits: Limits,
        config: BTreeMap<String, String>,
    ) -> Self {
        Plugin {
            name: name.into(),
            source,
            pre,
            limits,
            config: Arc::new(config),
            grants: Arc::new(Grants::default()),
            manifest_origin: None,
            identity: Arc::default(),
            filters: Arc::default(),
        }
    }

    pub(super) fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Arc::new(identity);
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The same plugin, allowed what `grants` allows.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = Arc::new(grants);
        self
    }

    /// Where its grants came from: a manifest file, or `None`.
    pub fn manifest_origin(&self) -> Option<&str> {
        self.manifest_origin.as_deref()
    }

    pub(super) fn with_manifest_origin(mut self, origin: Option<String>) -> Self {
        self.manifest_origin = origin;
        self
    }

    pub(super) fn with_filters(mut self, filters: Filters) -> Self {
        self.filters = Arc::new(filters);
        self
    }

    /// The filters of its manifest.
    pub fn filters(&self) -> &Arc<Filters> {
        &self.filters
    }

    /// Whether it takes messages in batches (the `batch-processor` world).
    pub fn is_batch(&self) -> bool {
        matches!(self.pre, Pre::Batch(_))
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn source(&self) -> &PluginSource {
        &self.source
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// A plugin's code, found but not yet compiled, and its manifest if it has
/// one.
#[derive(Debug, Clone)]
pub struct PluginCode {
    pub name: String,
    pub source: PluginSource,
    pub wasm: Cow<'static, [u8]>,
    pub manifest: Option<Manifest>,
    /// Where the manifest came from, for messages.
    pub manifest_origin: Option<String>,
}

/// `NAME.toml` beside `NAME.wasm` (or `[plugins.NAME]` in `wasq.toml`):
/// the plugin's limits, what it may touch and the settings it reads.
/// Whatever it does not grant is denied, and a plugin without one may
/// touch nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Limits per message; a binding's own settings override them.
    #[serde(default)]
    pub limits: LimitSettings,
    #[serde(default)]
    pub blobs: BlobsSection,
    #[serde(default)]
    pub records: RecordsSection,
    /// Values the plugin reads with `config.get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Filter criteria (Lambda's patterns, as JSON text): only messages
    /// matching one of them run; a binding's own replace them.
    #[serde(default)]
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsSection {
    /// URI prefixes it may read, e.g. `s3://docs/`.
    #[serde(default)]
    pub read: Vec<String>,
    /// URI prefixes it may write under.
    #[serde(default)]
    pub write: Vec<String>,
    /// Whether it may replace objects that already exist (default: no; a
    /// create over an existing object is denied, unless the object is this
    /// same message's output from an earlier delivery).
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSection {
    /// Tables it may read and write; `["*"]` for every table.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Whether it may replace records another message wrote (default: no).
    #[serde(default)]
    pub overwrite: bool,
}

impl PluginCode {
    /// The grants of the manifest; nothing without one.
    pub fn grants(&self) -> anyhow::Result<Grants> {
        match &self.manifest {
            None => Ok(Grants::default()),
            Some(manifest) => Grants::new(
                &manifest.blobs.read,
                &manifest.blobs.write,
                &manifest.records.tables,
                manifest.blobs.overwrite,
            )
            .map(|grants| Grants {
                overwrite_records: manifest.records.overwrite,
                ..grants
            })
            .with_context(|| {
                format!(
                    "plugin `{}`: manifest {}",
                    self.name,
                    self.manifest_origin.as_deref().unwrap_or_default()
                )
            }),
        }
    }

    /// The manifest's filters, compiled.
    pub fn filters(&self) -> anyhow::Result<Filters> {
        let texts = self.manifest.as_ref().map_or(&[][..], |m| &m.filters[..]);
        Filters::parse(texts).with_context(|| {
            format!(
                "plugin `{}`: manifest {}",
                self.name,
                self.manifest_origin.as_deref().unwrap_or_default()
            )
        })
    }

    /// The manifest's limits with `overrides` (a binding's or the command
    /// line's) on top, over the defaults.
    pub fn limits(&self, overrides: &LimitSettings) -> anyhow::Result<Limits> {
        let manifest = self
            .manifest
            .as_ref()
            .map(|m| m.limits.clone())
            .unwrap_or_default();
        overrides
            .or(&manifest)
            .resolve()
            .with_context(|| format!("plugin `{}`", self.name))
    }

    /// The manifest's settings with `overrides` on top.
    pub fn config(&self, overrides: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut config = self
            .manifest
            .as_ref()
            .map(|m| m.config.clone())
            .unwrap_or_default();
        config.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        config
    }
}

/// Where plugins are looked up: the plugins folder, then the built-ins; and
/// the operator's manifests (`[plugins.NAME]` in `wasq.toml`, the way
/// built-ins get theirs).
#[derive(Debug, Clone, Default)]
pub struct PluginSources {
    pub dir: Option<PathBuf>,
    pub manifests: BTreeMap<String, Manifest>,
    /// The file the operator's manifests come from, for messages.
    pub manifests_file: Option<PathBuf>,
}

impl PluginSources {
    pub fn in_dir(dir: Option<PathBuf>) -> Self {
        PluginSources {
            dir,
            ..PluginSources::default()
        }
    }

    /// The code for `wanted` (see [`find`]), with its manifest.
    pub fn find(&self, wanted: &str) -> anyhow::Result<PluginCode> {
        let code = find(wanted, self.dir.as_deref())?;
        self.with_manifest(code)
    }

    /// Every plugin there is (see [`discover`]), with their manifests.
    pub fn discover(&self) -> anyhow::Result<Vec<PluginCode>> {
        let found = discover(self.dir.as_deref())?;
        found.into_iter().map(|c| self.with_manifest(c)).collect()
    }

    /// Adds the operator's manifest. A plugin with a manifest beside its
    /// file and a different one in the operator's file is refused: which
    /// grants apply must never depend on which file wins, and a dropped-in
    /// file must not widen what the operator allowed.
    fn with_manifest(&self, mut code: PluginCode) -> anyhow::Result<PluginCode> {
        let Some(operator) = self.manifests.get(&code.name) else {
            return Ok(code);
        };
        let operator_origin = format!(
            "[plugins.{}] in {}",
            code.name,
            self.manifests_file
                .as_deref()
                .map_or("wasq.toml".into(), |p| p.display().to_string())
        );
        match &code.manifest {
            Some(beside) if beside != operator => anyhow::bail!(
                "plugin `{}`: {} and {operator_origin} both give a manifest, and they differ; keep one of them",
                code.name,
                code.manifest_origin
                    .as_deref()
                    .unwrap_or("its own manifest"),
            ),
            Some(_) => {}
            None => {
                code.manifest = Some(operator.clone());
                code.manifest_origin = Some(operator_origin);
            }
        }
        Ok(code)
    }

    /// The file a plugin comes from, or would once dropped in: `None` for
    /// a name without a plugins folder.
    pub fn file_of(&self, wanted: &str) -> Option<PathBuf> {
        if is_path(wanted) {
            Some(PathBuf::from(wanted))
        } else {
            self.dir
                .as_ref()
                .map(|dir| dir.join(format!("{wanted}.wasm")))
        }
    }
}

/// Reads the manifest beside a plugin file, if there is one, and names it.
fn manifest_for(wasm_path: &Path) -> anyhow::Result<(Option<Manifest>, Option<String>)> {
    let path = wasm_path.with_extension("toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(|m| (Some(m), Some(path.display().to_string())))
            .with_context(|| format!("{} is not a valid plugin manifest", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok((None, None)),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Plugin names are what a file name and a config key can both carry.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    anyhow::ensure!(
        ok,
        "`{name}` is not a valid plugin name (1-64 lowercase letters, digits, `-` or `_`)"
    );
    Ok(())
}

/// Whether a plugin is named by a path to its file rather than by name.
fn is_path(wanted: &str) -> bool {
    wanted.ends_with(".wasm") || wanted.contains('/')
}

/// Finds the code for `wanted`: a path to a `.wasm` file, or a name looked
/// up first in `plugins_dir` (`NAME.wasm`) and then among the built-ins.
pub fn find(wanted: &str, plugins_dir: Option<&Path>) -> anyhow::Result<PluginCode> {
    if is_path(wanted) {
        let path = PathBuf::from(wanted);
        let wasm =
            std::fs::read(&path).with_context(|| format!("reading plugin {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or("plugin")
            .to_string();
        let (manifest, manifest_origin) = manifest_for(&path)?;
        return Ok(PluginCode {
            name,
            manifest,
            manifest_origin,
            source: PluginSource::File(path),
            wasm: Cow::Owned(wasm),
        });
    }
    check_name(wanted)?;
    if let Some(dir) = plugins_dir {
        let path = dir.join(format!("{wanted}.wasm"));
        match std::fs::read(&path) {
            Ok(wasm) => {
                let (manifest, manifest_origin) = manifest_for(&path)?;
                return Ok(PluginCode {
                    name: wanted.to_string(),
                    manifest,
                    manifest_origin,
                    source: PluginSource::File(path),
                    wasm: Cow::Owned(wasm),
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("reading plugin {}", path.display()));
            }
        }
    }
    match BUILT_IN.iter().find(|(name, _)| *name == wanted) {
        Some((name, wasm)) => {
            // A built-in's manifest may sit in the plugins folder as if its
            // file were there.
            let (manifest, manifest_origin) = match plugins_dir {
                Some(dir) => manifest_for(&dir.join(format!("{wanted}.wasm")))?,
                None => (None, None),
            };
            Ok(PluginCode {
                name: name.to_string(),
                source: PluginSource::BuiltIn,
                wasm: Cow::Borrowed(wasm),
                manifest,
                manifest_origin,
            })
        }
        None => {
            let built_in: Vec<_> = BUILT_IN.iter().map(|(name, _)| *name).collect();
            let looked = match plugins_dir {
                Some(dir) => format!("{}/{wanted}.wasm nor ", dir.display()),
                None => String::new(),
            };
            anyhow::bail!(
                "no plugin `{wanted}`: found neither {looked}a built-in of that name (built-in: {})",
                built_in.join(", ")
            )
        }
    }
}

/// Every plugin there is: the built-ins, then `plugins_dir/*.wasm`, a file
/// replacing the built-in of its name. Sorted by name.
pub fn discover(plugins_dir: Option<&Path>) -> anyhow::Result<Vec<PluginCode>> {
    let mut found: BTreeMap<String, PluginCode> = BTreeMap::new();
    for (name, _) in BUILT_IN {
        found.insert(name.to_string(), find(name, plugins_dir)?);
    }
    if let Some(dir) = plugins_dir {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "wasm") && check_name(name).is_ok() {
                found.insert(name.to_string(), find(name, Some(dir))?);
            }
        }
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_plugins_dir_overrides_a_built_in() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            find("compress", Some(dir.path())).unwrap().source,
            PluginSource::BuiltIn
        );
        std::fs::write(dir.path().join("compress.wasm"), b"\0asm").unwrap();
        let code = find("compress", Some(dir.path())).unwrap();
        assert_eq!(
            code.source,
            PluginSource::File(dir.path().join("compress.wasm"))
        );
    }

    #[test]
    fn a_manifest_beside_the_file_narrows_grants_and_adds_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
        let code = find("p", Some(dir.path())).unwrap();
        assert_eq!(code.grants().unwrap(), Grants::default());
        std::fs::write(
            dir.path().join("p.toml"),
            "[blobs]\nread = [\"s3://docs\"]\n[records]\ntables = [\"jobs\"]\n[config]\nlevel = \"9\"\nmode = \"a\"\n",
        )
        .unwrap();
        let code = find("p", Some(dir.path())).unwrap();
        let grants = code.grants().unwrap();
        assert_eq!(
            grants.read,
            [super::super::grants::Prefix::parse("s3://docs/").unwrap()]
        );
        assert!(grants.write.is_empty());
        assert_eq!(
            grants.tables,
            super::super::grants::Tables::Only(vec!["jobs".to_string()])
        );
        let config = code.config(&BTreeMap::from([("mode".to_string(), "b".to_string())]));
        assert_eq!(
            config,
            BTreeMap::from([("level".into(), "9".into()), ("mode".into(), "b".into())])
        );
        std::fs::write(
            dir.path().join("p.toml"),
            "[limits]\ntimeout = \"2s\"\nfuel = 100\n",
        )
        .unwrap();
        let code = find("p", Some(dir.path())).unwrap();
        let limits = code.limits(&LimitSettings::default()).unwrap();
        assert_eq!(limits.timeout, std::time::Duration::from_secs(2));
        assert_eq!(limits.fuel, Some(100));
        let flags = LimitSettings {
            timeout: Some("1s".into()),
            ..LimitSettings::default()
        };
        assert_eq!(
            code.limits(&flags).unwrap().timeout,
            std::time::Duration::from_secs(1)
        );
        std::fs::write(dir.path().join("p.toml"), "[blobz]\n").unwrap();
        let err = format!("{:#}", find("p", Some(dir.path())).unwrap_err());
        assert!(
            err.contains("p.toml is not a valid plugin manifest"),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_from_the_config_file_applies_where_no_file_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let sources = PluginSources {
            dir: Some(dir.path().to_path_buf()),
            manifests: BTreeMap::from([(
                "compress".to_string(),
                Manifest {
                    config: BTreeMap::from([("level".into(), "1".into())]),
                    ..Manifest::default()
                },
            )]),
            manifests_file: None,
        };
        let code = sources.find("compress").unwrap();
        assert_eq!(code.source, PluginSource::BuiltIn);
        assert_eq!(code.config(&BTreeMap::new())["level"], "1");
        std::fs::write(dir.path().join("compress.wasm"), b"\0asm").unwrap();
        let code = sources.find("compress").unwrap();
        assert_eq!(code.config(&BTreeMap::new())["level"], "1");
    }

    /// A sidecar `NAME.toml` once silently replaced the operator's
    /// `[plugins.NAME]`, wider or not.
    #[test]
    fn a_sidecar_manifest_that_differs_from_the_operators_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let operator = Manifest {
            blobs: BlobsSection {
                read: vec!["s3://docs/".into()],
                ..BlobsSection::default()
            },
            ..Manifest::default()
        };
        let sources = PluginSources {
            dir: Some(dir.path().to_path_buf()),
            manifests: BTreeMap::from([("compress".to_string(), operator)]),
            manifests_file: Some("ops/wasq.toml".into()),
        };
        std::fs::write(dir.path().join("compress.wasm"), b"\0asm").unwrap();
        std::fs::write(
            dir.path().join("compress.toml"),
            "[blobs]\nread = [\"s3://\"]\n",
        )
        .unwrap();
        let err = format!("{:#}", sources.find("compress").unwrap_err());
        assert!(
            err.contains(
                "compress.toml and [plugins.compress] in ops/wasq.toml both give a manifest"
            ),
            "{err}"
        );
        // The same manifest in both places is no conflict.
        std::fs::write(
            dir.path().join("compress.toml"),
            "[blobs]\nread = [\"s3://docs/\"]\n",
        )
        .unwrap();
        let code = sources.find("compress").unwrap();
        assert_eq!(code.grants().unwrap().read.len(), 1);
    }

    #[test]
    fn unknown_and_bad_names_are_explained() {
        let err = find("nope", None).unwrap_err().to_string();
        assert!(
            err.contains("no plugin `nope`") && err.contains("compress"),
            "{err}"
        );
        let err = find("Bad Name", None).unwrap_err().to_string();
        assert!(err.contains("not a valid plugin name"), "{err}");
    }
}
