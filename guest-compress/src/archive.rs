//! Streams a job's objects into one zip written back to the store, signs a
//! link to it and records the result. Written against the small [`Store`]
//! trait so the same code runs inside the component and natively (the
//! benchmark compares the two).

use crate::job::{self, Job};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::rc::Rc;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Bytes asked of the store per read, and buffered before each write.
pub const CHUNK: u32 = 1 << 20;
/// Inputs at least this large get ZIP64 headers: deflate can add a little to
/// incompressible data, so the switch comes a margin before 4 GiB.
const LARGE_FILE: u64 = 0xF000_0000;
/// Entries stored unchanged from this size on are appended by the store
/// itself when it can (S3 copies them inside the bucket); below it a copy
/// saves too little to be worth its requests.
const COPY_AT_LEAST: u64 = 16 << 20;
/// Entries opened, and deflating, ahead of the one being written: the
/// host deflates them on its own threads meanwhile.
pub const AHEAD: usize = 16;
/// Inputs named to the store per hint. The host keeps a bounded list of
/// hints (10,000), so a job names its inputs a slice at a time, one to two
/// slices ahead of the entry being written.
pub const HINT_SLICE: usize = 1024;
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

/// An object's bytes being deflated by the store: raw DEFLATE, non-final
/// blocks ending byte-aligned.
pub trait ObjectDeflated {
    /// Up to `max` compressed bytes; empty at the end.
    fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError>;
    /// The CRC-32 and size of what was deflated, once the end was read.
    fn checksum(&self) -> Result<Checksum, StoreError>;
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
    type Deflated: ObjectDeflated;
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
    /// Asks the store to append `length` bytes of the object `reader`
    /// reads, from byte `offset` on, to `writer` without passing them
    /// through here (a copy inside the store). `Ok(false)` when it cannot:
    /// then nothing was appended. The reader's position does not move.
    fn append_from(
        &self,
        _writer: &mut Self::Writer,
        _reader: &Self::Reader,
        _offset: u64,
        _length: u64,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The CRC-32 of the whole object `reader` reads, when the store keeps
    /// one for that version.
    fn checksum(&self, _reader: &Self::Reader) -> Result<Option<Checksum>, StoreError> {
        Ok(None)
    }
    /// Starts deflating what `reader` reads at `level` (1-9); the work may
    /// go on elsewhere while the caller does other things.
    fn deflate(&self, reader: Self::Reader, level: u32) -> Result<Self::Deflated, StoreError>;
}

/// Reads into `chunk` until it holds [`CHUNK`] bytes or the object ends:
/// whole chunks whatever sizes the reads come in (they follow the network),
/// so what is made of them is the same on every store and every run.
fn fill_chunk<R: ObjectReader>(reader: &mut R, chunk: &mut Vec<u8>) -> Result<(), StoreError> {
    while chunk.len() < CHUNK as usize {
        let read = reader.read(CHUNK - chunk.len() as u32)?;
        if read.is_empty() {
            break;
        }
        chunk.extend_from_slice(&read);
    }
    Ok(())
}

/// Deflates a reader here, as it is read: for stores that cannot deflate
/// elsewhere (the tests' and the native benchmark's). It makes the stream
/// the host makes: each whole chunk of [`CHUNK`] deflated on its own and
/// ended with a sync flush.
pub struct InlineDeflated<R> {
    reader: R,
    level: u32,
    crc: crc32fast::Hasher,
    size: u64,
    done: bool,
    out: Vec<u8>,
    at: usize,
}

impl<R: ObjectReader> InlineDeflated<R> {
    pub fn new(reader: R, level: u32) -> Self {
        InlineDeflated {
            reader,
            level,
            crc: crc32fast::Hasher::new(),
            size: 0,
            done: false,
            out: Vec::new(),
            at: 0,
        }
    }
}

impl<R: ObjectReader> ObjectDeflated for InlineDeflated<R> {
    fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
        let unwritable = |err: io::Error| StoreError::Unavailable(format!("deflating: {err}"));
        while self.at == self.out.len() && !self.done {
            let mut chunk = Vec::with_capacity(CHUNK as usize);
            fill_chunk(&mut self.reader, &mut chunk)?;
            self.crc.update(&chunk);
            self.size += chunk.len() as u64;
            self.done = chunk.len() < CHUNK as usize;
            let mut encoder = DeflateEncoder::new(Vec::new(), Compression::new(self.level));
            encoder.write_all(&chunk).map_err(unwritable)?;
            encoder.flush().map_err(unwritable)?;
            self.out = std::mem::take(encoder.get_mut());
            self.at = 0;
        }
        let n = (max as usize).min(self.out.len() - self.at);
        let bytes = self.out[self.at..self.at + n].to_vec();
        self.at += n;
        Ok(bytes)
    }

    fn checksum(&self) -> Result<Checksum, StoreError> {
        if !self.done || self.at < self.out.len() {
            return Err(StoreError::Invalid(
                "the deflated stream was not read to its end".into(),
            ));
        }
        Ok(Checksum {
            crc32: self.crc.clone().finalize(),
            size: self.size,
        })
    }
}

/// A whole object's CRC-32 and the size it covers, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub crc32: u32,
    pub size: u64,
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
    // The host opens the inputs ahead, so their round trips overlap, and
    // deflates the next entries on its own threads while this one is
    // written. Each is still checked in its turn: a missing one rejects the
    // job with the archive unfinished, and an unfinished archive is never
    // visible.
    let names = job::entry_names(&job.files);

    let output_what = format!("field `output` `{}`", job.output);
    let writer = store
        .create(&job.output, Some("application/zip"))
        .map_err(|err| Failure::from_store(&output_what, err))?;
    let out = Rc::new(RefCell::new(Out::new(writer)));
    let mut zip = ZipWriter::new_stream(Sink(out.clone()));

    let mut read = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK as usize);
    let mut ahead: VecDeque<Result<Prepared<S>, Failure>> = VecDeque::new();
    let mut hinted = 0;
    for (index, name) in names.iter().enumerate() {
        if hinted < job.files.len() && hinted <= index + HINT_SLICE {
            let end = (hinted + HINT_SLICE).min(job.files.len());
            store.prefetch(&job.files[hinted..end]);
            hinted = end;
        }
        // Once an entry failed, none after it is started: its failure is
        // the job's, and a later one must not end the run first (a
        // bytes-read limit passed by a stream started ahead would).
        while ahead.len() < AHEAD
            && index + ahead.len() < names.len()
            && ahead.back().is_none_or(Result::is_ok)
        {
            let next = index + ahead.len();
            ahead.push_back(prepare(
                store,
                &job.files[next],
                &names[next],
                next,
                settings,
            ));
        }
        let Prepared { info, method, body } = ahead.pop_front().expect("prepared above")?;
        let uri = &job.files[index];
        let what = format!("files[{index}] `{uri}`");
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .compression_level((method == CompressionMethod::Deflated).then_some(settings.level))
            .large_file(info.size >= LARGE_FILE)
            .unix_permissions(0o644);
        zip.start_file(name.as_str(), options)
            .map_err(|err| zip_failure(&output_what, err))?;
        let mut reader = match body {
            Body::Plain(reader) => reader,
            Body::Deflating(deflated) => {
                let entry = deflated_entry(&mut zip, deflated, &what, &output_what)?;
                if entry.size != info.size {
                    return Err(Failure::Retry(format!(
                        "{what}: {} bytes deflated where it held {}: the object changed",
                        entry.size, info.size
                    )));
                }
                read += info.size;
                store.debug(&format!(
                    "added {uri} as `{name}` ({} bytes, {method}, deflated by the store)",
                    info.size
                ));
                continue;
            }
        };
        // A large stored entry's bytes are copied by the store; they are
        // still read, for the CRC-32 the zip records, and dropped here.
        let copied = method == CompressionMethod::Stored
            && info.size >= COPY_AT_LEAST
            && out
                .borrow_mut()
                .append_from(store, &reader, info.size)
                .map_err(|err| match err {
                    // The object changed between `stat` and `open` (the
                    // copy's range is checked against what the reader
                    // reads): worth another try.
                    StoreError::Invalid(_) => Failure::Retry(format!("{what}: copying it: {err}")),
                    err => Failure::from_store(&format!("{what}: copying it"), err),
                })?;
        // An entry copied whole whose CRC-32 the store keeps is not read.
        let known = if copied {
            store
                .checksum(&reader)
                .map_err(|err| Failure::from_store(&what, err))?
                .filter(|sum| sum.size == info.size)
        } else {
            None
        };
        if let Some(sum) = known {
            skip_entry(&mut zip, sum, &mut chunk).map_err(|err| zip_failure(&output_what, err))?;
            read += info.size;
            store.debug(&format!(
                "added {uri} as `{name}` ({} bytes, {method}, copied by the store, CRC-32 from the store)",
                info.size
            ));
            continue;
        }
        let mut entry = 0u64;
        loop {
            chunk.clear();
            fill_chunk(&mut reader, &mut chunk).map_err(|err| Failure::from_store(&what, err))?;
            if chunk.is_empty() {
                break;
            }
            entry += chunk.len() as u64;
            zip.write_all(&chunk)
                .map_err(|err| io_failure(&output_what, err))?;
        }
        if copied && entry != info.size {
            return Err(Failure::Retry(format!(
                "{what}: {entry} bytes read where {} were copied: the object changed",
                info.size
            )));
        }
        read += info.size;
        store.debug(&format!(
            "added {uri} as `{name}` ({} bytes, {method}{})",
            info.size,
            if copied { ", copied by the store" } else { "" }
        ));
    }

    drop(zip.finish().map_err(|err| zip_failure(&output_what, err))?);
    let archive = Rc::try_unwrap(out)
        .ok()
        .expect("the zip writer is gone")
        .into_inner()
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

/// An entry made ready ahead of its turn: described, opened, and when it
/// is deflated, deflating in the store.
struct Prepared<S: Store> {
    info: ObjectInfo,
    method: CompressionMethod,
    body: Body<S>,
}

enum Body<S: Store> {
    Plain(S::Reader),
    Deflating(S::Deflated),
}

fn prepare<S: Store>(
    store: &S,
    uri: &str,
    name: &str,
    index: usize,
    settings: &Settings,
) -> Result<Prepared<S>, Failure> {
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
    let reader = store
        .open(uri)
        .map_err(|err| Failure::from_store(&what, err))?;
    let body = if method == CompressionMethod::Deflated {
        let level = u32::try_from(settings.level).expect("levels are 1-9 here");
        Body::Deflating(
            store
                .deflate(reader, level)
                .map_err(|err| Failure::from_store(&what, err))?,
        )
    } else {
        Body::Plain(reader)
    };
    Ok(Prepared { info, method, body })
}

/// Writes a deflated entry's bytes, as the store deflated them, into the
/// entry the zip writer has open, and gives it their size and CRC-32.
fn deflated_entry<W: ObjectWriter, D: ObjectDeflated>(
    zip: &mut ZipWriter<zip::write::StreamWriter<Sink<W>>>,
    mut deflated: D,
    what: &str,
    output_what: &str,
) -> Result<Checksum, Failure> {
    // The store fails the stream as invalid when the object changed while
    // it was read: worth another try, as for a copy.
    let failed = |err: StoreError| match err {
        StoreError::Invalid(_) => Failure::Retry(format!("{what}: deflating it: {err}")),
        err => Failure::from_store(&format!("{what}: deflating it"), err),
    };
    loop {
        let bytes = deflated.read(CHUNK).map_err(failed)?;
        if bytes.is_empty() {
            break;
        }
        // SAFETY: not memory safety; the zip crate's contract that the
        // archive stays whole. The bytes go where the entry's compressor
        // would write them, counted as the entry's; they are DEFLATE blocks
        // that end byte-aligned and not final, so the final block the
        // entry's compressor writes when the entry ends (it was given no
        // input) completes the stream.
        let inner = unsafe { zip.get_mut() }.expect("an entry is open");
        inner
            .write_all(&bytes)
            .map_err(|err| io_failure(output_what, err))?;
    }
    let sum = deflated.checksum().map_err(failed)?;
    // SAFETY: as in `skip_entry`: the size and CRC-32 are those of the
    // bytes the store deflated into this entry.
    unsafe { zip.set_file_metadata(sum.size, sum.crc32) }
        .map_err(|err| zip_failure(output_what, err))?;
    Ok(sum)
}

/// The archive on its way to the store: written in chunks of [`CHUNK`],
/// except for stretches the store appended itself, which the zip writer
/// still writes (it computes their CRC-32) and which are dropped here.
struct Out<W> {
    writer: W,
    buffer: Vec<u8>,
    /// Bytes still to drop: the rest of a stretch the store appended.
    skip: u64,
}

impl<W: ObjectWriter> Out<W> {
    fn new(writer: W) -> Self {
        Out {
            writer,
            buffer: Vec::with_capacity(CHUNK as usize),
            skip: 0,
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        let dropped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.skip -= dropped as u64;
        bytes = &bytes[dropped..];
        if self.buffer.len() + bytes.len() > CHUNK as usize {
            self.flush()?;
        }
        if bytes.len() >= CHUNK as usize {
            self.writer.write(bytes)
        } else {
            self.buffer.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.buffer.is_empty() {
            self.writer.write(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Has the store append the first `length` bytes of what `reader`
    /// reads, and drops them when the zip writer writes them next.
    fn append_from<S: Store<Writer = W>>(
        &mut self,
        store: &S,
        reader: &S::Reader,
        length: u64,
    ) -> Result<bool, StoreError> {
        self.flush()?;
        let copied = store.append_from(&mut self.writer, reader, 0, length)?;
        if copied {
            self.skip = length;
        }
        Ok(copied)
    }

    fn finish(mut self) -> Result<ObjectInfo, StoreError> {
        self.flush()?;
        self.writer.finish()
    }
}

/// Lets the zip writer write into the archive's [`Out`].
struct Sink<W>(Rc<RefCell<Out<W>>>);

impl<W: ObjectWriter> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Finishes an entry whose bytes the store appended and whose CRC-32 it
/// knows, without reading them: the zip writer is given as many zeros
/// (dropped by [`Out`], which is skipping the appended stretch) so that its
/// count of the entry's bytes and of its own position is right, then the
/// store's CRC-32 for the one computed over the zeros.
fn skip_entry<W: ObjectWriter>(
    zip: &mut ZipWriter<zip::write::StreamWriter<Sink<W>>>,
    sum: Checksum,
    chunk: &mut Vec<u8>,
) -> zip::result::ZipResult<()> {
    chunk.clear();
    chunk.resize(CHUNK as usize, 0);
    let mut left = sum.size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        zip.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    // SAFETY: not memory safety; the zip crate's contract that the length
    // and CRC-32 describe the entry's data. The store appended exactly
    // `sum.size` bytes, the whole object of the version `sum` covers (the
    // copy and the checksum both name the reader's version), and `sum.crc32`
    // is the store's CRC-32 of those bytes.
    unsafe { zip.set_file_metadata(sum.size, sum.crc32) }
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
        /// Whether `append_from` copies, and how many bytes it copied.
        copies: bool,
        /// Whether reads return short chunks of varying size, as reads
        /// over a network do.
        ragged: bool,
        /// Whether the store keeps every object's CRC-32.
        checksums: bool,
        /// Per-object lines logged.
        logged: RefCell<Vec<String>>,
        copied: RefCell<u64>,
        /// Each hint, with how many objects had been opened when it came.
        hints: RefCell<Vec<(usize, Vec<String>)>>,
        opened: RefCell<usize>,
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
        Ragged(Vec<u8>, usize),
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
                MemReader::Ragged(bytes, at) => {
                    let short = 1 + (*at * 7919) % 70_000;
                    let end = (*at + short.min(max as usize)).min(bytes.len());
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
        type Deflated = InlineDeflated<MemReader>;

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
        fn prefetch(&self, uris: &[String]) {
            self.hints
                .borrow_mut()
                .push((*self.opened.borrow(), uris.to_vec()));
        }
        fn open(&self, uri: &str) -> Result<MemReader, StoreError> {
            *self.opened.borrow_mut() += 1;
            match zeros_len(uri) {
                Some(n) => Ok(MemReader::Zeros(n)),
                None if self.ragged => Ok(MemReader::Ragged(self.objects.borrow()[uri].clone(), 0)),
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
        fn debug(&self, message: &str) {
            self.logged.borrow_mut().push(message.to_string());
        }
        fn checksum(&self, reader: &MemReader) -> Result<Option<Checksum>, StoreError> {
            if !self.checksums {
                return Ok(None);
            }
            let (crc32, size) = match reader {
                MemReader::Bytes(bytes, _) | MemReader::Ragged(bytes, _) => {
                    (crc32fast::hash(bytes), bytes.len() as u64)
                }
                // The reader counts down; only a fresh one is asked.
                MemReader::Zeros(left) => {
                    let mut hasher = crc32fast::Hasher::new();
                    let zeros = vec![0; 1 << 20];
                    let mut n = *left;
                    while n > 0 {
                        let take = n.min(zeros.len() as u64);
                        hasher.update(&zeros[..take as usize]);
                        n -= take;
                    }
                    (hasher.finalize(), *left)
                }
            };
            Ok(Some(Checksum { crc32, size }))
        }
        fn append_from(
            &self,
            writer: &mut MemWriter,
            reader: &MemReader,
            offset: u64,
            length: u64,
        ) -> Result<bool, StoreError> {
            if !self.copies {
                return Ok(false);
            }
            let (start, end) = (offset as usize, (offset + length) as usize);
            match reader {
                MemReader::Bytes(bytes, _) | MemReader::Ragged(bytes, _) => {
                    writer.bytes.extend_from_slice(&bytes[start..end])
                }
                MemReader::Zeros(_) => writer.bytes.resize(writer.bytes.len() + end - start, 0),
            }
            *self.copied.borrow_mut() += length;
            Ok(true)
        }
        fn deflate(
            &self,
            reader: MemReader,
            level: u32,
        ) -> Result<InlineDeflated<MemReader>, StoreError> {
            Ok(InlineDeflated::new(reader, level))
        }
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
    fn a_long_job_names_its_inputs_a_slice_at_a_time_each_once_in_order() {
        let store = MemStore::default();
        let files: Vec<String> = (0..2 * HINT_SLICE + 500)
            .map(|i| format!("s3://d/{i}/zeros-{}.txt", i % 3))
            .collect();
        let body = serde_json::json!({"job_id": "j", "files": files, "output": "s3://o/j.zip"});
        run(&store, &body.to_string(), &Settings::default()).unwrap();
        let hints = store.hints.borrow();
        let named: Vec<String> = hints.iter().flat_map(|(_, uris)| uris.clone()).collect();
        assert_eq!(named, files, "every input named once, in order");
        assert!(hints.len() >= 3, "{} hints", hints.len());
        let mut hinted = 0;
        for (opened, uris) in hints.iter() {
            assert!(uris.len() <= HINT_SLICE);
            // Named before it is opened, never more than two slices ahead
            // of the opens (the entries prepared ahead included).
            assert!(hinted >= *opened, "{opened} opened, {hinted} named");
            assert!(
                hinted <= opened + 2 * HINT_SLICE,
                "{opened} opened, {hinted} named"
            );
            hinted += uris.len();
        }
        assert_eq!(archive(&store, "s3://o/j.zip").len(), files.len());
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

    /// Entries are opened (and deflating) ahead, but a failure is still
    /// the first failing file's, and nothing after it is started.
    #[test]
    fn the_first_failing_file_is_the_one_named() {
        let store = MemStore::default();
        for name in ["a.txt", "b.txt", "c.txt"] {
            store
                .objects
                .borrow_mut()
                .insert(format!("s3://d/{name}"), b"text".repeat(1000));
        }
        let body = serde_json::json!({
            "job_id": "j",
            "files": ["s3://d/a.txt", "s3://d/gone-1.txt", "s3://d/b.txt", "s3://d/gone-2.txt", "s3://d/c.txt"],
            "output": "s3://o/j.zip"
        })
        .to_string();
        let failure = run(&store, &body, &Settings::default()).unwrap_err();
        assert_eq!(
            failure,
            Failure::Reject("files[1] `s3://d/gone-1.txt`: not found: s3://d/gone-1.txt".into())
        );
        assert!(store.written.borrow().is_empty());
    }

    /// A large stored entry the store copies itself gives the very archive
    /// the zip writer would have written, small entries around it included.
    #[test]
    fn entries_the_store_copies_leave_the_archive_byte_identical() {
        let mut big: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        big[12345] = 7;
        let body = serde_json::json!({
            "job_id": "copy",
            "files": ["s3://d/a.txt", "s3://d/film.mp4", "s3://d/zeros-17000000.jpg", "s3://d/small.mp4", "s3://d/b.txt"],
            "output": "s3://o/copy.zip"
        })
        .to_string();
        let made = |copies: bool, checksums: bool| {
            let store = MemStore {
                copies,
                checksums,
                ..MemStore::default()
            };
            let mut objects = store.objects.borrow_mut();
            objects.insert("s3://d/a.txt".into(), b"first ".repeat(1000));
            objects.insert("s3://d/film.mp4".into(), big.clone());
            objects.insert("s3://d/small.mp4".into(), vec![9; 1 << 20]);
            objects.insert("s3://d/b.txt".into(), b"last".to_vec());
            drop(objects);
            run(&store, &body, &Settings::default()).unwrap();
            let bytes = store.written.borrow()["s3://o/copy.zip"].clone();
            let unread = store
                .logged
                .borrow()
                .iter()
                .filter(|line| line.contains("CRC-32 from the store"))
                .count();
            (bytes, *store.copied.borrow(), unread)
        };
        let (streamed, none, _) = made(false, false);
        let (copied, bytes, unread) = made(true, false);
        assert_eq!(none, 0);
        // The two large stored entries were copied; the small one was not.
        assert_eq!(bytes, (20 << 20) + 17_000_000);
        assert_eq!(unread, 0);
        assert!(streamed == copied, "the archives differ");
        // With the store's CRC-32s the copied entries are not even read.
        let (trusted, bytes, unread) = made(true, true);
        assert_eq!((bytes, unread), ((20 << 20) + 17_000_000, 2));
        assert!(streamed == trusted, "the archives differ");
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(copied)).unwrap();
        let mut film = Vec::new();
        zip.by_name("film.mp4")
            .unwrap()
            .read_to_end(&mut film)
            .unwrap();
        assert!(film == big);
    }

    /// Reads that come back in short chunks of any size, as over a network,
    /// make the same archive as whole ones: the compressor is fed whole
    /// chunks either way.
    #[test]
    fn read_sizes_do_not_change_the_archive() {
        let text: Vec<u8> = (0..40_000)
            .flat_map(|i| format!("line {i}: the quick brown fox {}\n", i % 97).into_bytes())
            .collect();
        let body =
            r#"{"job_id":"r","files":["s3://d/a.txt","s3://d/b.csv"],"output":"s3://o/r.zip"}"#;
        let made = |ragged: bool| {
            let store = MemStore {
                ragged,
                ..MemStore::default()
            };
            let mut objects = store.objects.borrow_mut();
            objects.insert("s3://d/a.txt".into(), text.clone());
            objects.insert("s3://d/b.csv".into(), text[..1_234_567].to_vec());
            drop(objects);
            run(&store, body, &Settings::default()).unwrap();
            store.written.take().remove("s3://o/r.zip").unwrap()
        };
        assert!(made(false) == made(true), "the archives differ");
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
