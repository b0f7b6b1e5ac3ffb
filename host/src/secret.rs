//! Secrets wasq keeps on disk: 32 random bytes in a file only the owner can
//! read, made on first use.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const SECRET_LEN: usize = 32;

/// Loads `dir/name`, generating it (mode 0600) on first use. Safe when
/// several processes start on one directory at once: the secret appears
/// whole under its name or not at all.
pub fn load_or_create(dir: &Path, name: &str) -> io::Result<[u8; SECRET_LEN]> {
    let path = dir.join(name);
    match read(&path) {
        Ok(secret) => Ok(secret),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            let mut secret = [0u8; SECRET_LEN];
            getrandom::fill(&mut secret).map_err(io::Error::other)?;
            let temp = dir.join(format!(".{name}.{}", std::process::id()));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&secret)?;
            file.sync_all()?;
            let linked = fs::hard_link(&temp, &path);
            fs::remove_file(&temp)?;
            match linked {
                Ok(()) => Ok(secret),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => read(&path),
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

fn read(path: &Path) -> io::Result<[u8; SECRET_LEN]> {
    let bytes = fs::read(path)?;
    bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a {SECRET_LEN}-byte secret", path.display()),
        )
    })
}
