//! The embedded object store: `s3://bucket/key` is the file `ROOT/bucket/key`.
//!
//! Every path is resolved beneath the root directory, opened once at start,
//! by `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: no symlink is
//! ever followed, so nothing swapped in between a check and a use can lead a
//! reader, a writer or the HTTP server outside the store or into another
//! bucket. Only regular files are objects (a named pipe or a device is
//! "no object", and is never opened in a way that could block). A new
//! object is written to an owner-only temp file, then renamed into place
//! with `RENAME_NOREPLACE` unless replacing was granted; nothing is visible
//! before `finish`. Writes that would leave less than a reserve of free
//! space fail as `unavailable` (a retry), so a job cannot fill the disk the
//! queue and records live on.

use super::sign::LinkSigner;
use super::{
    BlobError, BlobReader, BlobStore, BlobUri, BlobWriter, Budget, CreateOptions, ObjectInfo,
};
use crate::runtime::limits::Bytes;
use async_trait::async_trait;
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where unfinished objects are written. Bucket names cannot start with a
/// dot, so no object can live here.
const TEMP_DIR: &str = ".wasq-tmp";
/// The extended attribute naming the message that wrote an object.
const OWNER_XATTR: &str = "user.wasq.owner";
/// How old an unlocked temp file must be before the start-up sweep
/// removes it.
const ORPHAN_AGE: Duration = Duration::from_secs(60);
/// Free space a write must leave by default.
pub const DEFAULT_RESERVE: u64 = 512 << 20;

/// Objects in a directory.
#[derive(Clone)]
pub struct LocalBlobs {
    inner: Arc<Inner>,
}

struct Inner {
    root: OwnedFd,
    temp: OwnedFd,
    root_path: PathBuf,
    signer: LinkSigner,
    reserve: u64,
}

impl std::fmt::Debug for LocalBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlobs")
            .field("root", &self.inner.root_path)
            .field("reserve", &self.inner.reserve)
            .finish_non_exhaustive()
    }
}

/// An object opened for reading, with what is known of it.
pub struct Opened {
    pub file: File,
    pub info: ObjectInfo,
    /// Its modification time.
    pub modified: SystemTime,
}

impl LocalBlobs {
    /// A store rooted at `root` (created owner-only if missing) whose links
    /// are signed by `signer`. Unfinished objects a crashed process left
    /// behind are removed.
    pub fn new(root: &Path, signer: LinkSigner) -> io::Result<Self> {
        LocalBlobs::with_reserve(root, signer, DEFAULT_RESERVE)
    }

    /// As [`LocalBlobs::new`], keeping `reserve` bytes free on the disk.
    pub fn with_reserve(root: &Path, signer: LinkSigner, reserve: u64) -> io::Result<Self> {
        crate::secret::own_dir(root)?;
        crate::secret::private_dir(&root.join(TEMP_DIR))?;
        let root_path = root.canonicalize()?;
        let open_dir = |path: &Path| -> io::Result<OwnedFd> {
            Ok(rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        };
        let root_fd = open_dir(&root_path)?;
        let temp = open_dir(&root_path.join(TEMP_DIR))?;
        let store = LocalBlobs {
            inner: Arc::new(Inner {
                root: root_fd,
                temp,
                root_path,
                signer,
                reserve,
            }),
        };
        store.sweep_orphans();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root_path
    }

    /// The signer of this store's links, which the HTTP server verifies with.
    pub fn signer(&self) -> &LinkSigner {
        &self.inner.signer
    }

    /// Removes temp files no writer holds: each writer holds a lock on its
    /// own, so a file nobody has locked was left by a process that died.
    /// Files younger than a minute are left alone, since a writer in
    /// another process may be between creating its file and locking it.
    fn sweep_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(self.inner.root_path.join(TEMP_DIR)) else {
            return;
        };
        let (mut files, mut bytes) = (0u64, 0u64);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(fd) = rustix::fs::openat(
                &self.inner.temp,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let young = rustix::fs::fstat(&fd).is_ok_and(|st| {
                let modified = UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
                SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age < ORPHAN_AGE)
            });
            if !young
                && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
                && rustix::fs::unlinkat(&self.inner.temp, name.as_os_str(), AtFlags::empty())
                    .is_ok()
            {
                files += 1;
                bytes += rustix::fs::fstat(&fd).map_or(0, |st| st.st_size as u64);
            }
        }
        if files > 0 {
            tracing::info!(
                files,
                bytes,
                "removed unfinished objects left by an earlier run"
            );
        }
    }

    /// Opens `relative` beneath the root, never following a symlink.
    fn resolve(&self, relative: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOCTTY;
        match rustix::fs::openat2(
            &self.inner.root,
            relative,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            // Kernels before 5.6, and some container sandboxes, lack
            // openat2: walk the path a segment at a time instead, each
            // opened relative to the last without following symlinks.
            // Keys have no `.`, `..` or empty segments, so the walk stays
            // beneath the root.
            Err(Errno::NOSYS) | Err(Errno::PERM) => {
                let (parents, leaf) = relative.rsplit_once('/').unwrap_or(("", relative));
                let mut dir: Option<OwnedFd> = None;
                for segment in parents.split('/').filter(|s| !s.is_empty()) {
                    let next = rustix::fs::openat(
                        dir.as_ref().map_or(self.inner.root.as_fd(), |d| d.as_fd()),
                        segment,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    dir = Some(next);
                }
                Ok(rustix::fs::openat(
                    dir.as_ref().map_or(self.inner.root.as_fd(), |d| d.as_fd()),
                    leaf,
                    flags | OFlags::NOFOLLOW,
                    mode,
                )?)
            }
            other => Ok(other?),
        }
    }

    /// Opens the object at `uri` for reading: a regular file beneath the
    /// root, reached without symlinks. Anything else is no object.
    pub fn open_object(&self, uri: &BlobUri) -> Result<Opened, BlobError> {
        let relative = format!("{}/{}", uri.bucket(), uri.key());
        // Non-blocking, so that opening a named pipe returns at once; the
        // flag is cleared once the file is known to be a regular file.
        let fd = self
            .resolve(&relative, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
            .map_err(|err| io_error(uri, err))?;
        let stat = rustix::fs::fstat(&fd).map_err(|err| io_error(uri, err.into()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(BlobError::NotFound(format!("no object at `{uri}`")));
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|err| io_error(uri, err.into()))?;
        let (info, modified) = info_of(uri, &stat);
        Ok(Opened {
            file: File::from(fd),
            info,
            modified,
        })
    }

    /// Who wrote an object, as its writer recorded it.
    fn owner_of(fd: impl AsFd) -> Option<String> {
        let mut value = [0u8; 512];
        let len = rustix::fs::fgetxattr(fd, OWNER_XATTR, &mut value[..]).ok()?;
        String::from_utf8(value[..len].to_vec()).ok()
    }

    /// Whether an object already at the URI is this writer's to finish on:
    /// its owner wrote it (its own output, met again on a redelivery), or
    /// it holds exactly the bytes just written (nothing would change, and
    /// that holds where the filesystem keeps no owner, and for a job run
    /// again under a new message id). Otherwise `denied`, naming it.
    fn is_own(existing: &Opened, owner: &str, written: &mut File) -> io::Result<bool> {
        if LocalBlobs::owner_of(&existing.file).as_deref() == Some(owner) {
            return Ok(true);
        }
        let written_len = written.metadata()?.len();
        if written_len != existing.info.size {
            return Ok(false);
        }
        let mut existing_file = existing.file.try_clone()?;
        let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            let n = read_full(written, &mut a)?;
            let m = read_full(&mut existing_file, &mut b)?;
            if n != m || a[..n] != b[..m] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
        }
    }

    /// Opens (making them as needed) the directories above `uri`'s object,
    /// each owner-only, without following symlinks.
    fn parent_dir(&self, uri: &BlobUri) -> io::Result<OwnedFd> {
        let mut relative = uri.bucket().to_string();
        let mut segments = vec![uri.bucket()];
        if let Some((dirs, _)) = uri.key().rsplit_once('/') {
            segments.extend(dirs.split('/'));
        }
        let mut dir = None;
        for (i, segment) in segments.iter().enumerate() {
            if i > 0 {
                relative.push('/');
                relative.push_str(segment);
            }
            let parent = dir
                .as_ref()
                .map_or(self.inner.root.as_fd(), |d: &OwnedFd| d.as_fd());
            match rustix::fs::mkdirat(parent, *segment, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(err) => return Err(err.into()),
            }
            dir =
                Some(self.resolve(&relative, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?);
        }
        Ok(dir.expect("a bucket at least"))
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// The error for an object that exists and may not be replaced.
fn exists(uri: &BlobUri) -> BlobError {
    BlobError::Denied(format!(
        "`{uri}` already exists and was written by another message; this processor may not replace objects (its manifest can allow it with `overwrite = true` under [blobs])"
    ))
}

fn info_of(uri: &BlobUri, stat: &rustix::fs::Stat) -> (ObjectInfo, SystemTime) {
    let nanos = (stat.st_mtime as i128) * 1_000_000_000 + stat.st_mtime_nsec as i128;
    let modified = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    let info = ObjectInfo {
        uri: uri.clone(),
        size: stat.st_size as u64,
        content_type: mime_guess::from_path(uri.key())
            .first_raw()
            .map(str::to_string),
        // Inode, modification time and size: a replaced object (a new inode)
        // or one changed in place gets a new etag, and links that name the
        // old one stop working.
        etag: Some(format!("{:x}-{:x}-{:x}", stat.st_ino, nanos, stat.st_size)),
    };
    (info, modified)
}

/// Maps a filesystem error on `uri` to what the processor is told.
fn io_error(uri: &BlobUri, err: io::Error) -> BlobError {
    match Errno::from_io_error(&err) {
        Some(Errno::LOOP) | Some(Errno::XDEV) => BlobError::Invalid(format!(
            "`{uri}`: the path crosses a symlink or leaves the store, which the local store never follows"
        )),
        Some(Errno::NOSPC) | Some(Errno::DQUOT) => {
            BlobError::Unavailable(format!("`{uri}`: the local store's disk is full"))
        }
        _ => match err.kind() {
            io::ErrorKind::NotFound => BlobError::NotFound(format!("no object at `{uri}`")),
            io::ErrorKind::PermissionDenied => {
                BlobError::Denied(format!("`{uri}`: the local store may not access it"))
            }
            io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => BlobError::Invalid(
                format!("`{uri}`: the key clashes with a key prefix (file and folder of one name)"),
            ),
            _ => BlobError::Unavailable(format!("`{uri}`: {err}")),
        },
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    uri: &BlobUri,
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(BlobError::Unavailable(format!("`{uri}`: {join}"))),
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError> {
        let store = self.clone();
        let target = uri.clone();
        blocking(uri, move || Ok(store.open_object(&target)?.info)).await
    }

    /// Unlinks the object's file, its directory reached beneath the root
    /// without symlinks; anything there but a regular file is left alone.
    async fn delete(&self, uri: &BlobUri) -> Result<(), BlobError> {
        let store = self.clone();
        let target = uri.clone();
        blocking(uri, move || {
            let relative = format!("{}/{}", target.bucket(), target.key());
            let (parent, leaf) = relative
                .rsplit_once('/')
                .expect("a bucket and a key, so one slash at least");
            let dir = match store.resolve(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            {
                Ok(dir) => dir,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(err) => return Err(io_error(&target, err)),
            };
            match rustix::fs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat)
                    if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                        == rustix::fs::FileType::RegularFile => {}
                Ok(_) => {
                    return Err(BlobError::Invalid(format!(
                        "`{target}` is not an object the store made; left alone"
                    )));
                }
                Err(Errno::NOENT) => return Ok(()),
                Err(err) => return Err(io_error(&target, err.into())),
            }
            match rustix::fs::unlinkat(&dir, leaf, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(err) => Err(io_error(&target, err.into())),
            }
        })
        .await
    }

    async fn open(
        &self,
        uri: &BlobUri,
        _budget: &Budget,
    ) -> Result<Box<dyn BlobReader>, BlobError> {
        let store = self.clone();
        let target = uri.clone();
        let opened = blocking(uri, move || store.open_object(&target)).await?;
        Ok(Box::new(LocalReader {
            info: opened.info,
            file: Some(opened.file),
        }))
    }

    async fn create(
        &self,
        uri: &BlobUri,
        options: CreateOptions<'_>,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        // Whether an object already there may be replaced is decided when
        // the writer finishes, by the rename and by what it wrote.
        let mut suffix = [0u8; 12];
        getrandom::fill(&mut suffix)
            .map_err(|err| BlobError::Unavailable(format!("`{uri}`: {err}")))?;
        let temp = format!("{}.part", hex::encode(suffix));
        let store = self.clone();
        let name = temp.clone();
        let target = uri.clone();
        let file = blocking(uri, move || {
            let fd = rustix::fs::openat(
                &store.inner.temp,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|err| io_error(&target, err.into()))?;
            // Held for the writer's life: the start-up sweep removes only
            // temp files nobody holds.
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
                .map_err(|err| io_error(&target, err.into()))?;
            Ok(File::from(fd))
        })
        .await?;
        Ok(Box::new(LocalWriter {
            uri: uri.clone(),
            store: self.clone(),
            temp: TempFile {
                store: self.clone(),
                name: temp,
                renamed: false,
            },
            file: Some(file),
            overwrite: options.overwrite,
            owner: options.owner.to_string(),
        }))
    }

    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError> {
        super::check_link_lifetime(uri, expires_in)?;
        // A link names the object's version: once the object is replaced,
        // the link stops working instead of serving other bytes.
        let version = self
            .stat(uri)
            .await?
            .etag
            .expect("local objects always have an etag");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(self
            .inner
            .signer
            .sign(uri, &version, (now + expires_in).as_secs()))
    }
}

struct LocalReader {
    info: ObjectInfo,
    /// Taken while a read runs on the blocking pool; `None` after a failure.
    file: Option<File>,
}

#[async_trait]
impl BlobReader for LocalReader {
    fn info(&self) -> &ObjectInfo {
        &self.info
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        let mut file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier read failed", self.info.uri))
        })?;
        let uri = self.info.uri.clone();
        let (file, chunk) = blocking(&self.info.uri, move || {
            let mut chunk = vec![0u8; max];
            let mut filled = 0;
            while filled < max {
                match file.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(io_error(&uri, err)),
                }
            }
            chunk.truncate(filled);
            Ok((file, chunk))
        })
        .await?;
        self.file = Some(file);
        Ok(chunk)
    }
}

/// Removes an unfinished object's temp file when its writer is dropped.
struct TempFile {
    store: LocalBlobs,
    name: String,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ =
                rustix::fs::unlinkat(&self.store.inner.temp, self.name.as_str(), AtFlags::empty());
        }
    }
}

struct LocalWriter {
    uri: BlobUri,
    store: LocalBlobs,
    temp: TempFile,
    file: Option<File>,
    overwrite: bool,
    owner: String,
}

impl LocalWriter {
    /// Refuses a write that would leave less than the reserve free.
    fn check_space(
        store: &LocalBlobs,
        uri: &BlobUri,
        file: &File,
        len: u64,
    ) -> Result<(), BlobError> {
        let reserve = store.inner.reserve;
        if reserve == 0 {
            return Ok(());
        }
        let fs = rustix::fs::fstatvfs(file).map_err(|err| io_error(uri, err.into()))?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < len.saturating_add(reserve) {
            return Err(BlobError::Unavailable(format!(
                "`{uri}`: the local store's disk has {} free, and the store keeps {} in reserve; try again once there is room",
                Bytes(free),
                Bytes(reserve)
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        let mut file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier write failed", self.uri))
        })?;
        let store = self.store.clone();
        let uri = self.uri.clone();
        let file = blocking(&self.uri, move || {
            LocalWriter::check_space(&store, &uri, &file, chunk.len() as u64)?;
            file.write_all(&chunk).map_err(|err| io_error(&uri, err))?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        let file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier write failed", self.uri))
        })?;
        let uri = self.uri.clone();
        blocking(&uri, move || {
            let this = &mut *self;
            let fail = |err: io::Error| io_error(&this.uri, err);
            file.sync_all().map_err(fail)?;
            // Where the filesystem keeps no extended attributes, the object
            // simply has no recorded owner.
            let _ = rustix::fs::fsetxattr(
                &file,
                OWNER_XATTR,
                this.owner.as_bytes(),
                rustix::fs::XattrFlags::empty(),
            );
            let parent = this.store.parent_dir(&this.uri).map_err(fail)?;
            let leaf = this.uri.key().rsplit('/').next().expect("keys are not empty");
            let flags = if this.overwrite {
                RenameFlags::empty()
            } else {
                RenameFlags::NOREPLACE
            };
            let mut linked = false;
            let renamed = match rustix::fs::renameat_with(
                &this.store.inner.temp,
                this.temp.name.as_str(),
                &parent,
                leaf,
                flags,
            ) {
                // Filesystems without RENAME_NOREPLACE: a hard link never
                // replaces either (the temp name is then removed on drop).
                Err(Errno::INVAL) if !this.overwrite => {
                    linked = true;
                    rustix::fs::linkat(
                        &this.store.inner.temp,
                        this.temp.name.as_str(),
                        &parent,
                        leaf,
                        AtFlags::empty(),
                    )
                }
                other => other,
            };
            match renamed {
                Ok(()) => {
                    this.temp.renamed = !linked;
                    rustix::fs::fsync(&parent).map_err(|err| fail(err.into()))?;
                    let stat = rustix::fs::fstat(&file).map_err(|err| fail(err.into()))?;
                    Ok(info_of(&this.uri, &stat).0)
                }
                Err(Errno::EXIST) => {
                    // Someone's object is there: this message's own (or the
                    // very bytes it wrote) is its output; anything else is
                    // not to be replaced.
                    let existing = this.store.open_object(&this.uri)?;
                    let mut written = rustix::fs::openat(
                        &this.store.inner.temp,
                        this.temp.name.as_str(),
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map(File::from)
                    .map_err(|err| fail(err.into()))?;
                    if !LocalBlobs::is_own(&existing, &this.owner, &mut written).map_err(fail)? {
                        return Err(exists(&this.uri));
                    }
                    tracing::debug!(uri = %this.uri, "the object is already this output; keeping it");
                    Ok(existing.info)
                }
                Err(err) => Err(fail(err.into())),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_LINK_LIFETIME;
    use super::*;
    use std::fs;

    fn store() -> (tempfile::TempDir, LocalBlobs) {
        let dir = tempfile::tempdir().unwrap();
        let signer = LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let blobs = LocalBlobs::new(&dir.path().join("blobs"), signer).unwrap();
        (dir, blobs)
    }

    fn uri(s: &str) -> BlobUri {
        BlobUri::parse(s).unwrap()
    }

    fn budget() -> Budget {
        Budget::default()
    }

    fn options<'a>(owner: &'a str, budget: &'a Budget) -> CreateOptions<'a> {
        CreateOptions {
            content_type: None,
            overwrite: false,
            owner,
            budget,
        }
    }

    async fn put(
        blobs: &LocalBlobs,
        target: &BlobUri,
        owner: &str,
        bytes: &[u8],
    ) -> Result<ObjectInfo, BlobError> {
        let budget = budget();
        let mut writer = blobs.create(target, options(owner, &budget)).await?;
        writer.write(bytes.to_vec()).await?;
        writer.finish().await
    }

    async fn read_all(blobs: &LocalBlobs, target: &BlobUri) -> Vec<u8> {
        let mut reader = blobs.open(target, &budget()).await.unwrap();
        let mut all = Vec::new();
        loop {
            let chunk = reader.read(1 << 16).await.unwrap();
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
    }

    #[tokio::test]
    async fn a_written_object_reads_back_whole() {
        let (_dir, blobs) = store();
        let target = uri("s3://docs/a/b.txt");
        let budget = budget();
        let mut writer = blobs
            .create(&target, options("q/1", &budget))
            .await
            .unwrap();
        writer.write(b"hello ".to_vec()).await.unwrap();
        writer.write(b"world".to_vec()).await.unwrap();
        let info = writer.finish().await.unwrap();
        assert_eq!(info.size, 11);
        assert_eq!(info.content_type.as_deref(), Some("text/plain"));

        let mut reader = blobs.open(&target, &budget).await.unwrap();
        assert_eq!(reader.read(4).await.unwrap(), b"hell");
        assert_eq!(reader.read(100).await.unwrap(), b"o world");
        assert!(reader.read(100).await.unwrap().is_empty());
        assert_eq!(blobs.stat(&target).await.unwrap().size, 11);
    }

    #[tokio::test]
    async fn nothing_is_visible_before_finish_and_a_dropped_writer_leaves_nothing() {
        let (dir, blobs) = store();
        let target = uri("s3://docs/part.bin");
        let budget = budget();
        let mut writer = blobs
            .create(&target, options("q/1", &budget))
            .await
            .unwrap();
        writer.write(b"partial".to_vec()).await.unwrap();
        assert!(matches!(
            blobs.stat(&target).await,
            Err(BlobError::NotFound(_))
        ));
        drop(writer);
        assert!(matches!(
            blobs.stat(&target).await,
            Err(BlobError::NotFound(_))
        ));
        let leftovers = fs::read_dir(dir.path().join("blobs").join(TEMP_DIR))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
    }

    /// A symlink in the store once let a processor granted one bucket read
    /// another, and swapping a directory for a symlink served files from
    /// outside the store.
    #[tokio::test]
    async fn symlinks_are_never_followed_inside_or_out() {
        let (dir, blobs) = store();
        let root = dir.path().join("blobs");
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"x").unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::create_dir_all(root.join("private")).unwrap();
        fs::write(root.join("private/secret"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("docs/out")).unwrap();
        std::os::unix::fs::symlink(root.join("private"), root.join("docs/in")).unwrap();
        std::os::unix::fs::symlink(root.join("private/secret"), root.join("docs/file")).unwrap();
        for target in [
            "s3://docs/out/secret",
            "s3://docs/in/secret",
            "s3://docs/file",
        ] {
            let target = uri(target);
            assert!(
                matches!(
                    blobs.open(&target, &budget()).await,
                    Err(BlobError::Invalid(_))
                ),
                "{target}"
            );
            assert!(
                matches!(blobs.stat(&target).await, Err(BlobError::Invalid(_))),
                "{target}"
            );
        }
        // Writing through a symlinked directory fails too, and leaves
        // nothing behind outside the store.
        let err = put(&blobs, &uri("s3://docs/out/new"), "q/1", b"z")
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Invalid(_)), "{err:?}");
        assert!(!outside.path().join("new").exists());
        // A symlinked bucket is no way in either.
        std::os::unix::fs::symlink(root.join("private"), root.join("pub")).unwrap();
        assert!(matches!(
            blobs.stat(&uri("s3://pub/secret")).await,
            Err(BlobError::Invalid(_))
        ));
    }

    /// A named pipe in the store once hung `wasq test` forever.
    #[tokio::test]
    async fn only_regular_files_are_objects() {
        let (dir, blobs) = store();
        let root = dir.path().join("blobs");
        fs::create_dir_all(root.join("docs/folder")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("docs/pipe"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for target in ["s3://docs/pipe", "s3://docs/folder", "s3://docs/none"] {
            let opened =
                tokio::time::timeout(Duration::from_secs(5), blobs.open(&uri(target), &budget()))
                    .await
                    .expect("opening never blocks");
            assert!(matches!(opened, Err(BlobError::NotFound(_))), "{target}");
            assert!(matches!(
                blobs.stat(&uri(target)).await,
                Err(BlobError::NotFound(_))
            ));
        }
    }

    /// One job once replaced another's archive, and the victim's link then
    /// served the attacker's bytes.
    #[tokio::test]
    async fn existing_objects_are_not_replaced_unless_granted_or_owned() {
        let (_dir, blobs) = store();
        let target = uri("s3://archives/j.zip");
        let first = put(&blobs, &target, "jobs/m1", b"victim").await.unwrap();
        let link = blobs
            .presign_get(&target, Duration::from_secs(60))
            .await
            .unwrap();

        // Another message: refused at create, before any bytes move.
        let err = put(&blobs, &target, "jobs/m2", b"attacker")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BlobError::Denied(m) if m.contains("already exists") && m.contains("s3://archives/j.zip")),
            "{err:?}"
        );
        assert_eq!(read_all(&blobs, &target).await, b"victim");

        // The same message again (a redelivery): its own output stands,
        // whatever it wrote this time.
        let again = put(&blobs, &target, "jobs/m1", b"victim, again")
            .await
            .unwrap();
        assert_eq!(again.etag, first.etag);
        // Another message that wrote exactly the same bytes (the same job
        // redriven under a new id) changes nothing, so it finishes too.
        let same = put(&blobs, &target, "jobs/m9", b"victim").await.unwrap();
        assert_eq!(same.etag, first.etag);
        assert_eq!(read_all(&blobs, &target).await, b"victim");

        // Both writers racing past the early check: the rename decides.
        let budget = budget();
        let mut racer = blobs
            .create(&uri("s3://archives/r.zip"), options("jobs/m3", &budget))
            .await
            .unwrap();
        put(&blobs, &uri("s3://archives/r.zip"), "jobs/m4", b"first")
            .await
            .unwrap();
        racer.write(b"second".to_vec()).await.unwrap();
        assert!(matches!(racer.finish().await, Err(BlobError::Denied(_))));
        assert_eq!(
            read_all(&blobs, &uri("s3://archives/r.zip")).await,
            b"first"
        );

        // Granted replacing: the object changes, and the old link's version
        // no longer matches.
        let mut writer = blobs
            .create(
                &target,
                CreateOptions {
                    overwrite: true,
                    ..options("jobs/m2", &budget)
                },
            )
            .await
            .unwrap();
        writer.write(b"replaced".to_vec()).await.unwrap();
        let replaced = writer.finish().await.unwrap();
        assert_ne!(replaced.etag, first.etag);
        let (path, query) = link
            .strip_prefix("http://127.0.0.1:1")
            .unwrap()
            .split_once('?')
            .unwrap();
        let (_, version) = blobs.signer().verify(path, query, 0).unwrap();
        assert_eq!(Some(version), first.etag);
    }

    #[tokio::test]
    async fn a_write_that_would_eat_the_reserve_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let blobs = LocalBlobs::with_reserve(&dir.path().join("b"), signer, u64::MAX / 2).unwrap();
        let err = put(&blobs, &uri("s3://docs/big"), "q/1", b"x")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BlobError::Unavailable(m) if m.contains("in reserve")),
            "{err:?}"
        );
        assert!(matches!(
            blobs.stat(&uri("s3://docs/big")).await,
            Err(BlobError::NotFound(_))
        ));
    }

    /// A 330 MB part once survived a restart.
    #[tokio::test]
    async fn orphaned_parts_are_swept_at_start_and_live_ones_kept() {
        let (dir, blobs) = store();
        let root = dir.path().join("blobs");
        let dead = root.join(TEMP_DIR).join("dead.part");
        fs::write(&dead, vec![0u8; 4096]).unwrap();
        let young = root.join(TEMP_DIR).join("young.part");
        fs::write(&young, vec![0u8; 16]).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&dead)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let budget = budget();
        let mut live = blobs
            .create(&uri("s3://docs/live"), options("q/1", &budget))
            .await
            .unwrap();
        live.write(b"still writing".to_vec()).await.unwrap();
        let signer = LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let _second = LocalBlobs::new(&root, signer).unwrap();
        let names: Vec<_> = fs::read_dir(root.join(TEMP_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        // The dead one went; the live writer's and the one too young to
        // judge stayed.
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!dead.exists() && young.exists());
        live.finish().await.unwrap();
        assert_eq!(
            read_all(&blobs, &uri("s3://docs/live")).await,
            b"still writing"
        );
    }

    #[tokio::test]
    async fn the_store_and_its_objects_are_owner_only_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, blobs) = store();
        put(&blobs, &uri("s3://docs/a/b.txt"), "q/1", b"x")
            .await
            .unwrap();
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("blobs"), 0o700);
        assert_eq!(mode("blobs/docs"), 0o700);
        assert_eq!(mode("blobs/docs/a"), 0o700);
        assert_eq!(mode("blobs/docs/a/b.txt"), 0o600);
    }

    #[tokio::test]
    async fn missing_objects_are_not_found() {
        let (_dir, blobs) = store();
        assert!(matches!(
            blobs.stat(&uri("s3://docs/none")).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            blobs
                .presign_get(&uri("s3://docs/none"), Duration::from_secs(60))
                .await,
            Err(BlobError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn links_are_signed_and_bounded() {
        let (_dir, blobs) = store();
        let target = uri("s3://archives/j.zip");
        put(&blobs, &target, "q/1", b"zip").await.unwrap();
        let link = blobs
            .presign_get(&target, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(link.starts_with("http://127.0.0.1:1/blobs/archives/j.zip?expires="));
        let too_long = MAX_LINK_LIFETIME + Duration::from_secs(1);
        assert!(matches!(
            blobs.presign_get(&target, too_long).await,
            Err(BlobError::Invalid(_))
        ));
    }
}
