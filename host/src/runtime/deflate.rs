//! `blobs.deflate`: the rest of an object deflated on the host's threads
//! while the processor goes on, so that several objects compress at once
//! on every core instead of one after another inside the processor.
//!
//! Each stream is a task that reads the object in whole chunks of [`CHUNK`]
//! (whatever sizes the store's reads come in, so the output is the same on
//! every store and every run), deflates each chunk on a blocking thread
//! once it holds one of the host's CPU permits (one per core, shared by
//! every message in the order asked for), and hands the compressed bytes
//! over a short queue. Compressed bytes waiting for the processor are held
//! in the message's buffer budget; when the budget is full a stream waits
//! until the processor asks it for bytes, so the one being read always goes
//! on. Dropping the stream stops its task.

use crate::blobs::{BlobError, BlobReader, Budget, Checksum, Reservation};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Bytes deflated at a time: the unit the output is made of.
pub const CHUNK: usize = 1 << 20;
/// Compressed chunks a stream holds ready ahead of the processor.
const READY: usize = 2;

/// One permit per core, for every message's deflate work together.
fn cpu() -> &'static Arc<Semaphore> {
    static CPU: OnceLock<Arc<Semaphore>> = OnceLock::new();
    CPU.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new(cores))
    })
}

/// Compressed bytes ready for the processor, and the end's checksum with
/// the last of them.
struct Ready {
    bytes: Vec<u8>,
    _held: Option<Reservation>,
    end: Option<Checksum>,
}

/// A stream being deflated, as the processor reads it.
pub struct Deflation {
    ready: mpsc::Receiver<Result<Ready, BlobError>>,
    /// The chunk being handed out, and how much of it went.
    current: Vec<u8>,
    at: usize,
    /// Set once the last bytes arrived.
    end: Option<Checksum>,
    /// Set once `read` returned the end.
    finished: bool,
    /// Set while the processor waits for this stream's next bytes.
    wanted: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Deflation {
    /// Starts deflating the rest of `reader`, which should hold `expected`
    /// more bytes, at `level` (1-9).
    pub fn start(reader: Box<dyn BlobReader>, expected: u64, level: u32, budget: Budget) -> Self {
        let (tx, ready) = mpsc::channel(READY);
        let wanted = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(reader, expected, level, budget, tx, wanted.clone()));
        Deflation {
            ready,
            current: Vec::new(),
            at: 0,
            end: None,
            finished: false,
            wanted,
            task,
        }
    }

    /// Up to `max` compressed bytes; empty at the end.
    pub async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        while self.at == self.current.len() {
            if self.end.is_some() {
                self.finished = true;
                return Ok(Vec::new());
            }
            self.wanted.store(true, Ordering::Release);
            let next = self.ready.recv().await;
            self.wanted.store(false, Ordering::Release);
            let ready = next.ok_or_else(|| {
                BlobError::Unavailable("deflating: the stream stopped".to_string())
            })??;
            self.current = ready.bytes;
            self.at = 0;
            self.end = ready.end;
        }
        let n = max.min(self.current.len() - self.at);
        let chunk = self.current[self.at..self.at + n].to_vec();
        self.at += n;
        if self.at == self.current.len() {
            self.current = Vec::new();
            self.at = 0;
        }
        Ok(chunk)
    }

    /// The CRC-32 and size of what was deflated, once `read` returned the
    /// end.
    pub fn checksum(&self) -> Option<Checksum> {
        self.end.filter(|_| self.finished)
    }
}

impl Drop for Deflation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    reader: Box<dyn BlobReader>,
    expected: u64,
    level: u32,
    budget: Budget,
    tx: mpsc::Sender<Result<Ready, BlobError>>,
    wanted: Arc<AtomicBool>,
) {
    if let Err(err) = deflate_all(reader, expected, level, &budget, &tx, &wanted).await {
        let _ = tx.send(Err(err)).await;
    }
}

async fn deflate_all(
    mut reader: Box<dyn BlobReader>,
    expected: u64,
    level: u32,
    budget: &Budget,
    tx: &mpsc::Sender<Result<Ready, BlobError>>,
    wanted: &AtomicBool,
) -> Result<(), BlobError> {
    let uri = reader.info().uri.clone();
    let changed = |seen: u64| {
        BlobError::Invalid(format!(
            "`{uri}` changed while it was deflated: {seen} bytes where {expected} were expected"
        ))
    };
    let mut encoder = Some(DeflateEncoder::new(Vec::new(), Compression::new(level)));
    let mut crc = crc32fast::Hasher::new();
    let mut total = 0u64;
    loop {
        let chunk = fill(reader.as_mut(), CHUNK).await?;
        total += chunk.len() as u64;
        if total > expected {
            return Err(changed(total));
        }
        let end = chunk.len() < CHUNK;
        crc.update(&chunk);
        let permit = cpu()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BlobError::Unavailable("deflating: the host is stopping".into()))?;
        let mut working = encoder.take().expect("put back after every chunk");
        let (working, bytes) = tokio::task::spawn_blocking(move || {
            let result = working.write_all(&chunk).and_then(|()| {
                // The end is a sync flush: byte-aligned, with no final
                // block, which the container's writer adds.
                if end { working.flush() } else { Ok(()) }
            });
            let bytes = std::mem::take(working.get_mut());
            result.map(|()| (working, bytes))
        })
        .await
        .map_err(|err| BlobError::Unavailable(format!("deflating: {err}")))?
        .map_err(|err| BlobError::Unavailable(format!("deflating: {err}")))?;
        drop(permit);
        encoder = Some(working);
        if end && total != expected {
            return Err(changed(total));
        }
        let held = hold(budget, bytes.len() as u64, wanted).await;
        let ready = Ready {
            bytes,
            _held: held,
            end: end.then(|| Checksum {
                crc32: crc.clone().finalize(),
                size: total,
            }),
        };
        if tx.send(Ok(ready)).await.is_err() || end {
            return Ok(());
        }
    }
}

/// Reserves `bytes` of the message's budget for compressed bytes waiting;
/// while it is full, waits until there is room or the processor asks for
/// this stream, which then takes the bytes at once.
async fn hold(budget: &Budget, bytes: u64, wanted: &AtomicBool) -> Option<Reservation> {
    loop {
        if let Ok(held) = budget.reserve_for_reading(bytes, "deflated bytes waiting") {
            return Some(held);
        }
        if wanted.load(Ordering::Acquire) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads until `want` bytes or the end.
async fn fill(reader: &mut dyn BlobReader, want: usize) -> Result<Vec<u8>, BlobError> {
    let mut chunk = Vec::with_capacity(want);
    while chunk.len() < want {
        let read = reader.read(want - chunk.len()).await?;
        if read.is_empty() {
            break;
        }
        chunk.extend_from_slice(&read);
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::{BlobUri, ObjectInfo};
    use async_trait::async_trait;
    use std::io::Read as _;

    /// An object in memory, read back in pieces of varying size, as reads
    /// over a network come.
    struct Ragged {
        info: ObjectInfo,
        bytes: Vec<u8>,
        at: usize,
        step: usize,
    }

    fn object(bytes: Vec<u8>, size: u64, step: usize) -> Box<dyn BlobReader> {
        Box::new(Ragged {
            info: ObjectInfo {
                uri: BlobUri::parse("s3://docs/object.txt").unwrap(),
                size,
                content_type: None,
                etag: None,
            },
            bytes,
            at: 0,
            step,
        })
    }

    #[async_trait]
    impl BlobReader for Ragged {
        fn info(&self) -> &ObjectInfo {
            &self.info
        }
        async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
            // 1, then 1 + step, 1 + 2 * step, ... bytes, wrapping.
            let want = 1 + (self.at * self.step) % 300_000;
            let end = (self.at + want.min(max)).min(self.bytes.len());
            let chunk = self.bytes[self.at..end].to_vec();
            self.at = end;
            Ok(chunk)
        }
    }

    fn text(len: usize) -> Vec<u8> {
        let words = ["queue ", "archive ", "object\n", "the ", "of ", "signed "];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(words[(state % 6) as usize].as_bytes());
        }
        out.truncate(len);
        out
    }

    async fn drain(mut stream: Deflation, max: usize) -> Result<(Vec<u8>, Checksum), BlobError> {
        let mut out = Vec::new();
        loop {
            assert!(stream.checksum().is_none(), "no checksum before the end");
            let bytes = stream.read(max).await?;
            assert!(bytes.len() <= max);
            if bytes.is_empty() {
                break;
            }
            out.extend_from_slice(&bytes);
        }
        Ok((out, stream.checksum().expect("a checksum at the end")))
    }

    /// The stream with a final block after it, as a zip writer ends it,
    /// inflated.
    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut whole = stream.to_vec();
        whole.extend_from_slice(&[0x03, 0x00]);
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&whole[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn the_stream_inflates_to_the_object_and_is_the_same_whatever_the_reads() {
        let budget = Budget::new(64 << 20);
        for len in [0, 1, 65_536, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345] {
            let bytes = text(len);
            let mut streams = Vec::new();
            for step in [1, 7919, 1 << 20] {
                let reader = object(bytes.clone(), len as u64, step);
                let (out, sum) = drain(
                    Deflation::start(reader, len as u64, 6, budget.clone()),
                    4096,
                )
                .await
                .unwrap();
                assert_eq!(sum.size, len as u64);
                assert_eq!(sum.crc32, crc32fast::hash(&bytes), "{len} bytes");
                assert_eq!(inflate(&out), bytes, "{len} bytes, reads growing by {step}");
                streams.push(out);
            }
            assert!(streams.windows(2).all(|w| w[0] == w[1]), "{len} bytes");
            if len >= CHUNK {
                assert!(streams[0].len() < len / 3, "text deflates");
            }
        }
        assert_eq!(
            budget.in_use(),
            0,
            "nothing is held once the streams are read"
        );
    }

    #[tokio::test]
    async fn an_object_longer_or_shorter_than_its_size_fails_the_stream() {
        let budget = Budget::new(64 << 20);
        for (len, said) in [(3 * CHUNK, 2 * CHUNK as u64), (1000, 2000)] {
            let reader = object(text(len), said, 7919);
            let err = drain(Deflation::start(reader, said, 6, budget.clone()), CHUNK)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, BlobError::Invalid(m) if m.contains("changed while it was deflated") && m.contains("s3://docs/object.txt")),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn streams_ahead_stop_at_the_budget_and_the_one_read_goes_on() {
        // Noise does not deflate: each compressed chunk is about 1 MiB. A
        // 16 MiB budget lets reading hold 8 MiB.
        let budget = Budget::new(16 << 20);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..8 * CHUNK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        let mut ahead: Vec<Deflation> = (0..8)
            .map(|_| {
                let reader = object(noise.clone(), noise.len() as u64, 1 << 20);
                Deflation::start(reader, noise.len() as u64, 6, budget.clone())
            })
            .collect();
        // Until the streams have filled what they may hold, and a while
        // after.
        for _ in 0..400 {
            if budget.in_use() >= 7 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Without the budget each would hold its queue full: 16 chunks.
        let queued: usize = ahead.iter().map(|d| d.ready.len()).sum();
        assert!((1..=8).contains(&queued), "{queued} chunks wait");
        assert!(
            budget.in_use() > 0 && budget.in_use() <= 8 << 20,
            "streams ahead hold {} bytes",
            budget.in_use()
        );
        // The last stream started is read to its end while the others hold
        // the budget.
        let last = ahead.pop().unwrap();
        let (out, sum) = drain(last, CHUNK).await.unwrap();
        assert_eq!(sum.size, noise.len() as u64);
        assert_eq!(inflate(&out), noise);
        drop(ahead);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.in_use(), 0, "dropped streams free what they held");
    }
}
