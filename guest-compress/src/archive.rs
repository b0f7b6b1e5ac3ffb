//! Streams a job's objects into one zip written back to the store, signs a
//! link to it and records the result. Written against the small [`Store`]
//! trait so the same code runs inside the component and natively (the
//! benchmark compares the two).

use crate::job::{self, Job};
use serde::Serialize;
use std::fmt;
use std::io::{self, BufWriter, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Bytes asked of the store per read, and buffered before each write.
pub const CHUNK: u32 = 1 << 20;
/// Inputs at least this large get ZIP64 headers: deflate can add a little to
/// incompressible data, so the switch comes a margin before 4 GiB.
const LARGE_FILE: u64 = 0xF000_0000;
/// The table results are recorded in, under the job id.
pub const RESULTS_TABLE: &str = "archives";

/// A failure reported by the store, as the blobs interface defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    Denied(String),
    Invalid(String),
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(m) => write!(f, "not found: {m}"),
            StoreError::Denied(m) => write!(f, "denied: {m}"),
            StoreError::Invalid(m) => write!(f, "invalid: {m}"),
            StoreError::Unavailable(m) => write!(f, "unavailable: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What the store knows of an object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub uri: String,
    pub size: u64,
    pub content_type: Option<String>,
}

/// An object being read.
pub trait ObjectReader {
    /// Up to `max` bytes; empty at the end.
    fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError>;
}

/// An object being written; nothing is visible until `finish`.
pub trait ObjectWriter {
    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError>;
    fn finish(self) -> Result<ObjectInfo, StoreError>;
}

/// Everything the archive job needs from its host.
pub trait Store {
    type Reader: ObjectReader;
    type Writer: ObjectWriter;
    fn stat(&self, uri: &str) -> Result<ObjectInfo, StoreError>;
    fn open(&self, uri: &str) -> Result<Self::Reader, StoreError>;
    fn create(&self, uri: &str, content_type: Option<&str>) -> Result<Self::Writer, StoreError>;
    fn presign_get(&self, uri: &str, expires_in_secs: u32) -> Result<String, StoreError>;
    fn put_record(&self, table: &str, key: &str, value: &str) -> Result<(), String>;
    fn info(&self, message: &str);
    /// Per-object detail, below `info`.
    fn debug(&self, _message: &str) {}
    /// Says which objects will be opened next, in order, so the store can
    /// start reading them; a hint that changes nothing else.
    fn prefetch(&self, _uris: &[String]) {}
}

/// Why a job did not complete, and so what should become of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Permanent: the job itself is wrong. Dead-letter it with this reason.
    Reject(String),
    /// Transient: the store was unavailable. Try again later.
    Retry(String),
}

impl Failure {
    /// Classifies a store error met while working on `what` (a field or URI).
    fn from_store(what: &str, err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Failure::Retry(format!("{what}: {err}")),
            _ => Failure::Reject(format!("{what}: {err}")),
        }
    }
}

/// The result recorded for a finished job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub archive: String,
    pub url: String,
    pub size: u64,
    pub files: usize,
}

/// Settings the operator may give in the processor's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deflate level, 1–9 (6 matches Info-ZIP's default); 0 stores every
    /// entry uncompressed.
    pub level: i64,
    /// Where archives go when a job names no `output`.
    pub output_prefix: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            level: 6,
            output_prefix: None,
        }
    }
}

/// Runs one job from its message body to its recorded result.
pub fn run<S: Store>(store: &S, body: &str, settings: &Settings) -> Result<Summary, Failure> {
    let job = job::parse(body, settings.output_prefix.as_deref()).map_err(Failure::Reject)?;
    let summary = build(store, &job, settings)?;
    let record = serde_json::to_string(&summary).expect("a summary always serialises");
    store
        .put_record(RESULTS_TABLE, &job.job_id, &record)
        .map_err(|err| {
            let reason = format!("recording the result of `{}`: {err}", job.job_id);
            // Another job's record, or a value the store refuses, will not
            // change on a retry.
            if err.starts_with("denied:") || err.starts_with("invalid:") {
                Failure::Reject(reason)
            } else {
                Failure::Retry(reason)
            }
        })?;
    Ok(summary)
}

/// Writes the archive and signs its link.
pub fn build<S: Store>(store: &S, job: &Job, settings: &Settings) -> Result<Summary, Failure> {
    // The host opens the inputs ahead, so their round trips overlap. Each
    // is still checked as it comes: a missing one rejects the job with the
    // archive unfinished, and an unfinished archive is never visible.
    store.prefetch(&job.files);
    let names = job::entry_names(&job.files);

    let output_what = format!("field `output` `{}`", job.output);
    let writer = store
        .create(&job.output, Some("application/zip"))
        .map_err(|err| Failure::from_store(&output_what, err))?;
    let mut zip = ZipWriter::new_stream(BufWriter::with_capacity(CHUNK as usize, Sink(writer)));

    let mut read = 0u64;
    for (index, name) in names.iter().enumerate() {
        let uri = &job.files[index];
        let what = format!("files[{index}] `{uri}`");
        let info = store
            .stat(uri)
            .map_err(|err| Failure::from_store(&what, err))?;
        let method =
            if settings.level == 0 || job::already_compressed(name, info.content_type.as_deref()) {
                CompressionMethod::Stored
            } else {
                CompressionMethod::Deflated
            };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .compression_level((method == CompressionMethod::Deflated).then_some(settings.level))
            .large_file(info.size >= LARGE_FILE)
            .unix_permissions(0o644);
        zip.start_file(name.as_str(), options)
            .map_err(|err| zip_failure(&output_what, err))?;
        let mut reader = store
            .open(uri)
            .map_err(|err| Failure::from_store(&what, err))?;
        loop {
            let chunk = reader
                .read(CHUNK)
                .map_err(|err| Failure::from_store(&what, err))?;
            if chunk.is_empty() {
                break;
            }
            zip.write_all(&chunk)
                .map_err(|err| io_failure(&output_what, err))?;
        }
        read += info.size;
        store.debug(&format!(
            "added {uri} as `{name}` ({} bytes, {method})",
            info.size
        ));
    }

    let buffered = zip.finish().map_err(|err| zip_failure(&output_what, err))?;
    let Sink(writer) = buffered
        .into_inner()
        .into_inner()
        .map_err(|err| io_failure(&output_what, err.into_error()))?;
    let archive = writer
        .finish()
        .map_err(|err| Failure::from_store(&output_what, err))?;
    let url = store
        .presign_get(&job.output, job.expires_in)
        .map_err(|err| Failure::from_store(&output_what, err))?;
    store.info(&format!(
        "archived {} files ({read} bytes) into {} ({} bytes)",
        job.files.len(),
        archive.uri,
        archive.size
    ));
    Ok(Summary {
        archive: archive.uri,
        url,
        size: archive.size,
        files: job.files.len(),
    })
}

/// Lets the zip writer write into a store writer.
struct Sink<W>(W);

impl<W: ObjectWriter> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A write that failed in the store keeps its store error; anything else is
/// a fault of the archive itself.
fn io_failure(what: &str, err: io::Error) -> Failure {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<StoreError>())
    {
        Some(store_err) => Failure::from_store(what, store_err.clone()),
        None => Failure::Reject(format!("{what}: writing the archive failed: {err}")),
    }
}

fn zip_failure(what: &str, err: zip::result::ZipError) -> Failure {
    match err {
        zip::result::ZipError::Io(io) => io_failure(what, io),
        other => Failure::Reject(format!("{what}: writing the archive failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::rc::Rc;

    /// A store in memory. Objects named `zeros-N` hold N zero bytes,
    /// produced as they are read.
    #[derive(Default)]
    struct MemStore {
        objects: RefCell<BTreeMap<String, Vec<u8>>>,
        written: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
        records: RefCell<Vec<(String, String, String)>>,
    }

    fn zeros_len(uri: &str) -> Option<u64> {
        uri.rsplit('/')
            .next()?
            .strip_prefix("zeros-")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    enum MemReader {
        Bytes(Vec<u8>, usize),
        Zeros(u64),
    }

    impl ObjectReader for MemReader {
        fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
            match self {
                MemReader::Bytes(bytes, at) => {
                    let end = (*at + max as usize).min(bytes.len());
                    let chunk = bytes[*at..end].to_vec();
                    *at = end;
                    Ok(chunk)
                }
                MemReader::Zeros(left) => {
                    let n = (*left).min(u64::from(max));
                    *left -= n;
                    Ok(vec![0; n as usize])
                }
            }
        }
    }

    struct MemWriter {
        uri: String,
        bytes: Vec<u8>,
        into: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
    }

    impl ObjectWriter for MemWriter {
        fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
            self.bytes.extend_from_slice(chunk);
            Ok(())
        }
        fn finish(self) -> Result<ObjectInfo, StoreError> {
            let size = self.bytes.len() as u64;
            self.into.borrow_mut().insert(self.uri.clone(), self.bytes);
            Ok(ObjectInfo {
                uri: self.uri,
                size,
                content_type: None,
            })
        }
    }

    impl Store for MemStore {
        type Reader = MemReader;
        type Writer = MemWriter;

        fn stat(&self, uri: &str) -> Result<ObjectInfo, StoreError> {
            let size = match zeros_len(uri) {
                Some(n) => n,
                None => self
                    .objects
                    .borrow()
                    .get(uri)
                    .map(|b| b.len() as u64)
                    .ok_or_else(|| StoreError::NotFound(uri.to_string()))?,
            };
            Ok(ObjectInfo {
                uri: uri.to_string(),
                size,
                content_type: None,
            })
        }
        fn open(&self, uri: &str) -> Result<MemReader, StoreError> {
            match zeros_len(uri) {
                Some(n) => Ok(MemReader::Zeros(n)),
                None => Ok(MemReader::Bytes(self.objects.borrow()[uri].clone(), 0)),
            }
        }
        fn create(&self, uri: &str, _: Option<&str>) -> Result<MemWriter, StoreError> {
            Ok(MemWriter {
                uri: uri.to_string(),
                bytes: Vec::new(),
                into: self.written.clone(),
            })
        }
        fn presign_get(&self, uri: &str, secs: u32) -> Result<String, StoreError> {
            Ok(format!("https://signed/{uri}?expires-in={secs}"))
        }
        fn put_record(&self, table: &str, key: &str, value: &str) -> Result<(), String> {
            self.records
                .borrow_mut()
                .push((table.into(), key.into(), value.into()));
            Ok(())
        }
        fn info(&self, _: &str) {}
    }

    fn archive(store: &MemStore, uri: &str) -> zip::ZipArchive<std::io::Cursor<Vec<u8>>> {
        let bytes = store.written.borrow()[uri].clone();
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap()
    }

    #[test]
    fn a_job_records_its_summary_and_the_archive_reads_back() {
        let store = MemStore::default();
        store
            .objects
            .borrow_mut()
            .insert("s3://d/a.txt".into(), b"hello hello hello".to_vec());
        store
            .objects
            .borrow_mut()
            .insert("s3://d/b.png".into(), vec![1, 2, 3]);
        let body = r#"{"job_id":"j","files":["s3://d/a.txt","s3://d/b.png"],"output":"s3://o/j.zip","expires_in":60}"#;
        let summary = run(&store, body, &Settings::default()).unwrap();
        assert_eq!(summary.url, "https://signed/s3://o/j.zip?expires-in=60");
        assert_eq!(summary.files, 2);
        let records = store.records.borrow();
        assert_eq!(records[0].0, RESULTS_TABLE);
        assert_eq!(records[0].1, "j");
        assert_eq!(records[0].2, serde_json::to_string(&summary).unwrap());
        let mut zip = archive(&store, "s3://o/j.zip");
        let mut text = String::new();
        zip.by_name("a.txt")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello hello hello");
        assert_eq!(
            zip.by_name("b.png").unwrap().compression(),
            zip::CompressionMethod::Stored
        );
    }

    #[test]
    fn a_missing_input_rejects_before_anything_is_written() {
        let store = MemStore::default();
        let body = r#"{"job_id":"j","files":["s3://d/none.txt"],"output":"s3://o/j.zip"}"#;
        let failure = run(&store, body, &Settings::default()).unwrap_err();
        assert_eq!(
            failure,
            Failure::Reject("files[0] `s3://d/none.txt`: not found: s3://d/none.txt".into())
        );
        assert!(store.written.borrow().is_empty());
        assert!(store.records.borrow().is_empty());
    }

    /// More than 65,535 entries needs ZIP64's end-of-directory records.
    #[test]
    fn seventy_thousand_entries_make_a_zip64_archive() {
        let store = MemStore::default();
        let files: Vec<String> = (0..70_000)
            .map(|i| format!("s3://d/zeros-{}.bin", i % 3))
            .collect();
        let body =
            serde_json::json!({"job_id": "many", "files": files, "output": "s3://o/many.zip"})
                .to_string();
        let summary = run(&store, &body, &Settings::default()).unwrap();
        assert_eq!(summary.files, 70_000);
        let mut zip = archive(&store, "s3://o/many.zip");
        assert_eq!(zip.len(), 70_000);
        assert_eq!(
            zip.by_index(69_999).unwrap().name().unwrap(),
            "zeros-0 (23334).bin"
        );
    }

    /// An entry over 4 GiB needs ZIP64 sizes in its headers.
    #[test]
    fn an_entry_over_4_gib_gets_zip64_sizes() {
        const SIZE: u64 = (4 << 30) + 12_345;
        let store = MemStore::default();
        let body = serde_json::json!({
            "job_id": "huge",
            "files": [format!("s3://d/zeros-{SIZE}.raw"), "s3://d/zeros-10.raw"],
            "output": "s3://o/huge.zip"
        })
        .to_string();
        let settings = Settings {
            level: 1,
            ..Settings::default()
        };
        run(&store, &body, &settings).unwrap();
        let mut zip = archive(&store, "s3://o/huge.zip");
        assert_eq!(zip.len(), 2);
        let mut entry = zip.by_index(0).unwrap();
        assert_eq!(entry.size(), SIZE);
        // Reading to the end checks the CRC as well as the length.
        let read = std::io::copy(&mut entry, &mut std::io::sink()).unwrap();
        assert_eq!(read, SIZE);
    }
}
