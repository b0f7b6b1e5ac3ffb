//! The embedded object store: `s3://bucket/key` is the file `ROOT/bucket/key`.
//! Keys that could leave ROOT are refused, and a new object appears only
//! when its writer finishes (temp file, fsync, atomic rename).

use super::sign::LinkSigner;
use super::{BlobError, BlobReader, BlobStore, BlobUri, BlobWriter, ObjectInfo};
use async_trait::async_trait;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where unfinished objects are written. Bucket names cannot start with a
/// dot, so no object can live here.
const TEMP_DIR: &str = ".wasq-tmp";

/// Objects in a directory.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
    signer: LinkSigner,
}

impl LocalBlobs {
    /// A store rooted at `root` (created if missing) whose links are signed
    /// by `signer`.
    pub fn new(root: &Path, signer: LinkSigner) -> io::Result<Self> {
        fs::create_dir_all(root.join(TEMP_DIR))?;
        let root = root.canonicalize()?;
        Ok(LocalBlobs { root, signer })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The signer of this store's links, which the HTTP server verifies with.
    pub fn signer(&self) -> &LinkSigner {
        &self.signer
    }

    /// The file behind `uri`. Refuses keys with empty, `.` or `..` segments
    /// (which covers absolute keys and `//`), NUL bytes, and anything that
    /// resolves, through symlinks, to outside the root.
    pub fn path_of(&self, uri: &BlobUri) -> Result<PathBuf, BlobError> {
        let unsafe_key = |why: &str| BlobError::Invalid(format!("`{uri}`: {why}"));
        uri.check_segments()?;
        let mut path = self.root.join(uri.bucket());
        path.extend(uri.key().split('/'));
        // Symlinks planted inside the root must not lead out of it: the
        // deepest part of the path that exists has to resolve inside.
        let mut existing = path.as_path();
        loop {
            match existing.canonicalize() {
                Ok(real) if real.starts_with(&self.root) => break,
                Ok(_) => return Err(unsafe_key("the key leads outside the store")),
                Err(_) => match existing.parent() {
                    Some(parent) if parent.starts_with(&self.root) => existing = parent,
                    _ => break,
                },
            }
        }
        Ok(path)
    }

    fn info(uri: &BlobUri, meta: &fs::Metadata) -> ObjectInfo {
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        ObjectInfo {
            uri: uri.clone(),
            size: meta.len(),
            content_type: mime_guess::from_path(uri.key())
                .first_raw()
                .map(str::to_string),
            etag: Some(format!("{:x}-{:x}", modified.as_nanos(), meta.len())),
        }
    }
}

/// Maps a filesystem error on `uri` to what the processor is told.
fn io_error(uri: &BlobUri, err: io::Error) -> BlobError {
    match err.kind() {
        io::ErrorKind::NotFound => BlobError::NotFound(format!("no object at `{uri}`")),
        io::ErrorKind::PermissionDenied => {
            BlobError::Denied(format!("`{uri}`: the local store may not access it"))
        }
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => BlobError::Invalid(format!(
            "`{uri}`: the key clashes with a key prefix (file and folder of one name)"
        )),
        _ => BlobError::Unavailable(format!("`{uri}`: {err}")),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    uri: &BlobUri,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|err| io_error(uri, err)),
        Err(join) => Err(BlobError::Unavailable(format!("`{uri}`: {join}"))),
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError> {
        let path = self.path_of(uri)?;
        let meta = blocking(uri, move || fs::metadata(path)).await?;
        if !meta.is_file() {
            return Err(BlobError::NotFound(format!("no object at `{uri}`")));
        }
        Ok(Self::info(uri, &meta))
    }

    async fn open(&self, uri: &BlobUri) -> Result<Box<dyn BlobReader>, BlobError> {
        let path = self.path_of(uri)?;
        let file = blocking(uri, move || {
            let file = File::open(&path)?;
            if file.metadata()?.is_dir() {
                return Err(io::ErrorKind::NotFound.into());
            }
            Ok(file)
        })
        .await?;
        Ok(Box::new(LocalReader {
            uri: uri.clone(),
            file: Some(file),
        }))
    }

    async fn create(
        &self,
        uri: &BlobUri,
        _content_type: Option<&str>,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        let path = self.path_of(uri)?;
        let mut suffix = [0u8; 12];
        getrandom::fill(&mut suffix)
            .map_err(|err| BlobError::Unavailable(format!("`{uri}`: {err}")))?;
        let temp = self
            .root
            .join(TEMP_DIR)
            .join(format!("{}.part", hex::encode(suffix)));
        let guard = TempFile(temp.clone());
        let file = blocking(uri, move || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
        })
        .await?;
        Ok(Box::new(LocalWriter {
            uri: uri.clone(),
            path,
            temp: guard,
            file: Some(file),
        }))
    }

    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError> {
        self.path_of(uri)?;
        super::check_link_lifetime(uri, expires_in)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(self.signer.sign(uri, (now + expires_in).as_secs()))
    }
}

struct LocalReader {
    uri: BlobUri,
    /// Taken while a read runs on the blocking pool; `None` after a failure.
    file: Option<File>,
}

#[async_trait]
impl BlobReader for LocalReader {
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        let mut file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier read failed", self.uri))
        })?;
        let (file, chunk) = blocking(&self.uri, move || {
            let mut chunk = vec![0u8; max];
            let mut filled = 0;
            while filled < max {
                match file.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
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
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // After `finish` the file has been renamed away and this fails
        // harmlessly.
        let _ = fs::remove_file(&self.0);
    }
}

struct LocalWriter {
    uri: BlobUri,
    path: PathBuf,
    temp: TempFile,
    file: Option<File>,
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        let mut file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier write failed", self.uri))
        })?;
        let file = blocking(&self.uri, move || file.write_all(&chunk).map(|()| file)).await?;
        self.file = Some(file);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        let file = self.file.take().ok_or_else(|| {
            BlobError::Unavailable(format!("`{}`: an earlier write failed", self.uri))
        })?;
        let temp = self.temp.0.clone();
        let path = self.path.clone();
        let meta = blocking(&self.uri, move || {
            file.sync_all()?;
            drop(file);
            let parent = path.parent().expect("object paths are inside the root");
            fs::create_dir_all(parent)?;
            fs::rename(&temp, &path)?;
            File::open(parent)?.sync_all()?;
            fs::metadata(&path)
        })
        .await?;
        Ok(LocalBlobs::info(&self.uri, &meta))
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_LINK_LIFETIME;
    use super::*;

    fn store() -> (tempfile::TempDir, LocalBlobs) {
        let dir = tempfile::tempdir().unwrap();
        let signer = LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let blobs = LocalBlobs::new(dir.path(), signer).unwrap();
        (dir, blobs)
    }

    fn uri(s: &str) -> BlobUri {
        BlobUri::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_written_object_reads_back_whole() {
        let (_dir, blobs) = store();
        let target = uri("s3://docs/a/b.txt");
        let mut writer = blobs.create(&target, None).await.unwrap();
        writer.write(b"hello ".to_vec()).await.unwrap();
        writer.write(b"world".to_vec()).await.unwrap();
        let info = writer.finish().await.unwrap();
        assert_eq!(info.size, 11);
        assert_eq!(info.content_type.as_deref(), Some("text/plain"));

        let mut reader = blobs.open(&target).await.unwrap();
        assert_eq!(reader.read(4).await.unwrap(), b"hell");
        assert_eq!(reader.read(100).await.unwrap(), b"o world");
        assert!(reader.read(100).await.unwrap().is_empty());
        assert_eq!(blobs.stat(&target).await.unwrap().size, 11);
    }

    #[tokio::test]
    async fn nothing_is_visible_before_finish_and_a_dropped_writer_leaves_nothing() {
        let (dir, blobs) = store();
        let target = uri("s3://docs/part.bin");
        let mut writer = blobs.create(&target, None).await.unwrap();
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
        let leftovers = fs::read_dir(dir.path().join(TEMP_DIR)).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn escaping_keys_are_invalid() {
        let (_dir, blobs) = store();
        for bad in [
            "s3://docs/../secret",
            "s3://docs/a/../../b",
            "s3://docs//etc/passwd",
            "s3://docs/a/./b",
            "s3://docs/a\0b",
            "s3://docs/trailing/",
        ] {
            let target = uri(bad);
            assert!(
                matches!(blobs.stat(&target).await, Err(BlobError::Invalid(_))),
                "{bad}"
            );
            assert!(
                matches!(
                    blobs.create(&target, None).await,
                    Err(BlobError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_root_is_refused() {
        let (dir, blobs) = store();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"x").unwrap();
        fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("docs/link")).unwrap();
        let target = uri("s3://docs/link/secret");
        assert!(matches!(
            blobs.open(&target).await,
            Err(BlobError::Invalid(_))
        ));
        assert!(matches!(
            blobs.create(&target, None).await,
            Err(BlobError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn missing_objects_and_folders_are_not_found() {
        let (dir, blobs) = store();
        assert!(matches!(
            blobs.stat(&uri("s3://docs/none")).await,
            Err(BlobError::NotFound(_))
        ));
        fs::create_dir_all(dir.path().join("docs/folder")).unwrap();
        assert!(matches!(
            blobs.stat(&uri("s3://docs/folder")).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            blobs.open(&uri("s3://docs/folder")).await,
            Err(BlobError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn links_are_signed_and_bounded() {
        let (_dir, blobs) = store();
        let target = uri("s3://archives/j.zip");
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
