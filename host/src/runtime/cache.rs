//! Compiled components on disk, so a restart loads a processor in
//! milliseconds instead of compiling it again.
//!
//! A file is named by the BLAKE3 hash of the component's bytes and of the
//! engine's settings (wasmtime's compatibility hash), so a changed plugin or
//! engine never meets an old file. Loading compiled code is trusting it: each
//! file ends with a keyed BLAKE3 hash (a MAC) under a secret only this cache
//! holds (`DIR/cache-key`, mode 0600, in a directory only its owner can
//! write), over the component's hash, the engine's settings and the
//! compiled bytes. A file whose tag does not verify — one wasq did not
//! write, a damaged one, or a good one copied over another component's
//! name — is never loaded; the component is compiled again and the file
//! replaced. BLAKE3
//! rather than HMAC-SHA256 because the tag covers tens of megabytes for
//! interpreted-language processors, and it is several times faster.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

const KEY_FILE: &str = "cache-key";
const TAG_LEN: usize = 32;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

pub struct CompileCache {
    dir: PathBuf,
    key: [u8; crate::secret::SECRET_LEN],
    /// The engine's settings, hashed.
    engine: [u8; 32],
}

/// Feeds `Hash` output into BLAKE3, for a digest that does not depend on
/// the standard library's hasher.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

impl CompileCache {
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        crate::secret::private_dir(dir)
            .with_context(|| format!("opening the compile cache {}", dir.display()))?;
        let key = crate::secret::load_or_create(dir, KEY_FILE)
            .with_context(|| format!("loading the compile cache's key in {}", dir.display()))?;
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
            engine: *hasher.0.finalize().as_bytes(),
        })
    }

    /// What names and binds a file: the component's bytes under this
    /// engine's settings.
    fn identity(&self, wasm: &[u8]) -> blake3::Hash {
        let mut digest = blake3::Hasher::new();
        digest.update(&self.engine);
        digest.update(wasm);
        digest.finalize()
    }

    /// The file for `wasm` under this engine.
    pub fn path_for(&self, wasm: &[u8]) -> PathBuf {
        self.dir
            .join(format!("{}.cwasm", self.identity(wasm).to_hex()))
    }

    /// The seal on a file: which component, under which engine settings,
    /// compiled to which bytes.
    fn tag(&self, identity: &blake3::Hash, compiled: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(identity.as_bytes());
        mac.update(compiled);
        mac.finalize()
    }

    /// The compiled component for `wasm`: from the cache when a file there
    /// verifies, otherwise compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, Origin)> {
        let identity = self.identity(wasm);
        let path = self.path_for(wasm);
        if let Some(component) = self.load(engine, &identity, &path) {
            return Ok((component, Origin::Cache));
        }
        let component = Component::new(engine, wasm)?;
        if let Err(err) = self.store(&identity, &path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "could not write the compile cache; compiling each start");
        }
        Ok((component, Origin::Compiled))
    }

    fn load(&self, engine: &Engine, identity: &blake3::Hash, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let split = bytes.len().checked_sub(TAG_LEN)?;
        let (compiled, tag) = bytes.split_at(split);
        let tag = blake3::Hash::from_bytes(tag.try_into().ok()?);
        // `Hash` compares in constant time.
        if self.tag(identity, compiled) != tag {
            tracing::warn!(path = %path.display(), "compile cache file not written by this cache; ignoring it");
            return None;
        }
        // SAFETY: the tag proves these bytes are what this cache wrote from
        // `Component::serialize` (nobody without the owner-only key can
        // make one), and wasmtime checks the engine settings and version
        // recorded in them.
        match unsafe { Component::deserialize(engine, compiled) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "compile cache file unusable; compiling again");
                None
            }
        }
    }

    fn store(
        &self,
        identity: &blake3::Hash,
        path: &Path,
        component: &Component,
    ) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let compiled = component.serialize()?;
        let tag = self.tag(identity, &compiled);
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&compiled)?;
        file.write_all(tag.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the header alone.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> Engine {
        Engine::default()
    }

    #[test]
    fn a_second_load_comes_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let wasm = EMPTY;
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        let (_, origin) = cache.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
        let (_, origin) = cache.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Cache);
        // Another cache (another key) over the same files trusts none.
        let other = tempfile::tempdir().unwrap();
        std::fs::copy(
            cache.path_for(wasm),
            other.path().join(cache.path_for(wasm).file_name().unwrap()),
        )
        .unwrap();
        let stranger = CompileCache::open(other.path(), &engine).unwrap();
        let (_, origin) = stranger.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
    }

    #[test]
    fn a_file_wasq_did_not_write_is_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let wasm = EMPTY;
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        cache.load_or_compile(&engine, wasm).unwrap();
        let path = cache.path_for(wasm);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, origin) = cache.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
        // ... and it was replaced by a good one.
        let (_, origin) = cache.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Cache);
        std::fs::write(&path, b"short").unwrap();
        let (_, origin) = cache.load_or_compile(&engine, wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
    }

    /// Copying another component's compiled file over `compress`'s entry
    /// once made `compress` run the other component's code.
    #[test]
    fn a_sealed_file_moved_to_another_components_name_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        // Two different components: the header alone, and one with an
        // empty custom section after it.
        let other: &[u8] = b"\0asm\x0d\0\x01\0\0\x02\x01x";
        cache.load_or_compile(&engine, EMPTY).unwrap();
        cache.load_or_compile(&engine, other).unwrap();
        std::fs::copy(cache.path_for(other), cache.path_for(EMPTY)).unwrap();
        let (_, origin) = cache.load_or_compile(&engine, EMPTY).unwrap();
        assert_eq!(origin, Origin::Compiled);
    }

    #[test]
    fn the_file_name_follows_content_and_engine_settings() {
        let dir = tempfile::tempdir().unwrap();
        let plain = engine();
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let fueled = Engine::new(&config).unwrap();
        let a = CompileCache::open(dir.path(), &plain).unwrap();
        let b = CompileCache::open(dir.path(), &fueled).unwrap();
        assert_ne!(a.path_for(b"one"), a.path_for(b"two"));
        assert_ne!(a.path_for(b"one"), b.path_for(b"one"));
    }
}
