//! Secrets and private directories wasq keeps on disk: 32 random bytes in a
//! file only the owner can read, made on first use, in a directory only the
//! owner can change. A secret another user owns, or can read or replace, is
//! refused: links signed with it could be forged, and compiled code sealed
//! with it could be planted.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const SECRET_LEN: usize = 32;

/// Creates `dir` (and missing parents) owner-only, whatever the umask. An
/// existing one must be this user's and writable by nobody else (who could
/// swap the files in it); one others can read is made owner-only, with a
/// warning. For wasq's own directories: the data directory, the compile
/// cache.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if !create_owner_only(dir)? {
        check_private(dir, Kind::Dir)?;
        let mode = fs::metadata(dir)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "made the directory owner-only: it holds records, links or secrets"
            );
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) owner-only, whatever the umask; an
/// existing one is left as it is. Returns whether it was made. For
/// directories the user may name (a blob store's root).
pub fn own_dir(dir: &Path) -> io::Result<bool> {
    create_owner_only(dir)
}

fn create_owner_only(dir: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(_) => Ok(false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            Ok(true)
        }
        Err(err) => Err(err),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Secret,
}

/// Refuses a directory or secret file that another user owns or may change
/// (and, for a secret, read), with an error that names the fix.
fn check_private(path: &Path, kind: Kind) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let me = rustix::process::geteuid().as_raw();
    let shown = path.display();
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    let (is_right_type, what) = match kind {
        Kind::Dir => (meta.is_dir(), "a directory"),
        Kind::Secret => (meta.is_file(), "a regular file"),
    };
    if !is_right_type {
        return refuse(format!(
            "{shown} is not {what} (a symlink is not followed); remove it and wasq makes a new one"
        ));
    }
    if meta.uid() != me {
        return refuse(format!(
            "{shown} belongs to user {} rather than this user ({me}); wasq trusts only its own files: remove it, or run wasq as its owner",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    match kind {
        Kind::Dir if mode & 0o022 != 0 => refuse(format!(
            "{shown} can be written by other users (mode {mode:o}), who could swap the files in it; run `chmod 700 {shown}`"
        )),
        Kind::Secret if mode & 0o077 != 0 => refuse(format!(
            "{shown} can be read or written by other users (mode {mode:o}), so it may be known to them; delete it (wasq makes a new one; links signed with it stop working) or, if it never left this user, run `chmod 600 {shown}`"
        )),
        _ => Ok(()),
    }
}

/// Loads `dir/name`, generating it (mode 0600) on first use. Safe when
/// several processes start on one directory at once: the secret appears
/// whole under its name or not at all.
pub fn load_or_create(dir: &Path, name: &str) -> io::Result<[u8; SECRET_LEN]> {
    private_dir(dir)?;
    let path = dir.join(name);
    match read(&path) {
        Ok(secret) => Ok(secret),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; SECRET_LEN];
            getrandom::fill(&mut secret).map_err(io::Error::other)?;
            let temp = dir.join(format!(".{name}.{}", std::process::id()));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
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
    check_private(path, Kind::Secret)?;
    let bytes = fs::read(path)?;
    bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a {SECRET_LEN}-byte secret", path.display()),
        )
    })
}

/// Makes a database file owner-only before SQLite opens it (SQLite gives
/// its journal and WAL files the database file's mode).
pub fn private_file(path: &Path) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.uid() == rustix::process::geteuid().as_raw() {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secrets_and_their_directory_are_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/deeper");
        let first = load_or_create(&data, "s").unwrap();
        assert_eq!(load_or_create(&data, "s").unwrap(), first);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("s")), 0o600);
    }

    /// A pre-planted, world-readable `link-secret` was once used without a
    /// word, so links could be forged.
    #[test]
    fn a_secret_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        private_dir(dir.path()).unwrap();
        let path = dir.path().join("link-secret");
        fs::write(&path, [7u8; SECRET_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), "link-secret").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(
            text.contains("link-secret") && text.contains("chmod 600"),
            "{text}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_or_create(dir.path(), "link-secret").unwrap(),
            [7u8; SECRET_LEN]
        );
    }

    #[test]
    fn a_directory_others_can_read_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("wasq-data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn a_directory_others_can_write_or_a_symlinked_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err = load_or_create(&shared, "cache-key")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 700"), "{err}");

        let private = dir.path().join("private");
        private_dir(&private).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, [1u8; SECRET_LEN]).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, private.join("cache-key")).unwrap();
        let err = load_or_create(&private, "cache-key")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn files_owned_by_another_user_are_refused() {
        // Root can hand a file to another user; elsewhere the check is the
        // same code path as the mode checks above.
        if rustix::process::geteuid().as_raw() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        private_dir(dir.path()).unwrap();
        let path = dir.path().join("link-secret");
        fs::write(&path, [7u8; SECRET_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = load_or_create(dir.path(), "link-secret")
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to user 65534"), "{err}");
    }
}
