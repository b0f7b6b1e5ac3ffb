// Builds a guest crate for wasm32-wasip2 from a build script. Shared by the
// host's build script (the built-in processors) and the test guests' (the
// misbehaving processors), so it is included by path rather than a crate.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Builds the crate at `crate_dir` in release mode with `features` and
/// copies its component to `OUT_DIR/<out_name>`, returning that path. `wit`
/// is the contract the guest is generated from.
pub fn build_guest(crate_dir: &Path, wit: &Path, out_name: &str, features: &[&str]) -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-changed={}", wit.display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    check_target_installed(&rustc);

    // The guests get their own target directory beside the host's: sharing
    // the outer build's directory would deadlock on its lock.
    let target_dir = guest_target_dir(&out_dir);
    let mut command = Command::new(&cargo);
    // Run from the guest's directory so its own .cargo/config.toml applies.
    command
        .current_dir(crate_dir)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    if !features.is_empty() {
        command
            .arg("--no-default-features")
            .arg("--features")
            .arg(features.join(","));
    }
    // Flags meant for the host (sanitizers, target-cpu) must not reach the
    // wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let output = command.output().unwrap_or_else(|err| {
        panic!(
            "could not run {} to build {}: {err}",
            Path::new(&cargo).display(),
            crate_dir.display()
        )
    });
    if !output.status.success() {
        panic!(
            "building the guest {} for {TARGET} failed:\n{}",
            crate_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let package = crate_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("guest dir has a name");
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    let dest = out_dir.join(out_name);
    std::fs::copy(&built, &dest)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", built.display(), dest.display()));
    dest
}

/// Fails early, naming the fix, when the wasm target's standard library is
/// not installed.
fn check_target_installed(rustc: &std::ffi::OsStr) {
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let installed = match output {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            std::fs::read_dir(&dir)
                .map(|mut entries| {
                    entries.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                    })
                })
                .unwrap_or(false)
        }
        _ => false,
    };
    if !installed {
        panic!(
            "the {TARGET} target is not installed, and wasq's processors are built for it.\n\
             Fix: rustup target add {TARGET}"
        );
    }
}

/// `<target>/wasm-guests`: cargo marks the root of its target directory with
/// CACHEDIR.TAG, and OUT_DIR lies somewhere below it.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .unwrap_or(out_dir)
        .join("wasm-guests")
}
