//! `blobs.deflate`: the rest of an object deflated on the host's threads
//! while the processor goes on, so that objects compress on every core at
//! once instead of one after another inside the processor.
//!
//! A stream reads its object in whole chunks of [`CHUNK`] (whatever sizes
//! the store's reads come in) and deflates each chunk on its own, with a
//! fresh compressor, ending it with a sync flush: the chunks' outputs,
//! byte-aligned and none of them final, follow one another as one DEFLATE
//! stream, and each depends only on its chunk's bytes and the level, so the
//! stream is the same on every store and every run of this host, and the
//! chunks of one object, like those of many, compress in parallel (a
//! back-reference never crosses a chunk: about 0.1 % of size, at 1 MiB).
//!
//! CPU: a chunk is compressed on a blocking thread holding one of the
//! host's CPU permits (one per core, for every message together) for as
//! long as it runs, even past its stream's end. A message's streams ask
//! for at most as many permits at once as there are cores ([`Share`]), so
//! the permits' queue takes messages in turn rather than one message's
//! whole backlog first. A dropped stream's chunks stop within 64 KiB.
//!
//! Memory: before a stream reads a chunk it reserves the chunk's worst case
//! (at most [`HELD`]) in the message's buffer budget, within the half
//! read-ahead may hold, and keeps it until the processor has taken the
//! compressed bytes. When the budget is full a stream waits until a
//! reservation is given back, unless the processor is waiting for it with
//! nothing queued: it then takes the message's one overdraft, a chunk
//! beyond the budget, which the processor takes at once. Beyond the budget
//! besides: a chunk's output while it is compressed, one per core for the
//! whole host.

use crate::blobs::{BlobError, BlobReader, Budget, Checksum, Reservation};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::task::AbortOnDropHandle;

/// Bytes deflated at a time, each chunk on its own.
pub const CHUNK: usize = 1 << 20;
/// What one chunk may hold at most, reserved before it is read: its input,
/// then its output (deflate adds at most 5 bytes per 16 KiB, plus the
/// flush, to bytes that do not compress).
pub const HELD: u64 = worst_case(CHUNK as u64);
/// Bytes compressed between looks at whether the stream was dropped.
const SLICE: usize = 64 << 10;
/// Chunks one stream has under way or waiting at most.
const QUEUE: usize = 64;

const fn worst_case(input: u64) -> u64 {
    input + input / 64 + 64
}

/// The level `deflate` was asked for, if it is one (1-9).
pub fn level(asked: u8) -> Result<u32, BlobError> {
    if (1..=9).contains(&asked) {
        Ok(u32::from(asked))
    } else {
        Err(BlobError::Invalid(format!(
            "deflate level {asked} is not 1-9 (level 0 is no compression: read the object)"
        )))
    }
}

/// The host's cores, asked once (the question reads cgroup files).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One permit per core, for every message's deflate work together.
fn cpu() -> &'static Arc<Semaphore> {
    static CPU: OnceLock<Arc<Semaphore>> = OnceLock::new();
    CPU.get_or_init(|| Arc::new(Semaphore::new(cores())))
}

/// One message's share of the host: its streams together ask for at most
/// one CPU permit per core at once, and hold at most one chunk beyond the
/// message's budget (the overdraft).
#[derive(Clone)]
pub struct Share {
    cpu: Arc<Semaphore>,
    overdraft: Arc<Semaphore>,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            cpu: Arc::new(Semaphore::new(cores())),
            overdraft: Arc::new(Semaphore::new(1)),
        }
    }
}

/// What a chunk on its way holds: room in the message's budget, or the
/// message's one overdraft.
enum Held {
    Reserved(#[allow(dead_code, reason = "held for its drop")] Reservation),
    Overdraft(#[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit),
}

/// A chunk on its way: compressing, or compressed; with the end's checksum
/// if it is the last.
struct Pending {
    job: AbortOnDropHandle<Result<Vec<u8>, BlobError>>,
    held: Held,
    end: Option<Checksum>,
}

/// Whether the processor waits for a stream's next chunk, and a bell for
/// the stream when it starts to.
#[derive(Default)]
struct Wanted {
    now: AtomicBool,
    bell: Notify,
}

/// A stream being deflated, as the processor reads it.
pub struct Deflation {
    pending: mpsc::Receiver<Result<Pending, BlobError>>,
    /// The chunk being handed out, and how much of it went.
    current: Vec<u8>,
    at: usize,
    /// What `current` holds.
    held: Option<Held>,
    /// Set once the last chunk arrived.
    end: Option<Checksum>,
    /// Set once `read` returned the end.
    finished: bool,
    wanted: Arc<Wanted>,
    /// Set when the stream is dropped: its chunks stop compressing.
    dropped: Arc<AtomicBool>,
    _task: AbortOnDropHandle<()>,
}

impl Deflation {
    /// Starts deflating the rest of `reader`, which should hold `expected`
    /// more bytes, at `level` (1-9), within the message's `budget` and
    /// `share` of the cores.
    pub fn start(
        reader: Box<dyn BlobReader>,
        expected: u64,
        level: u32,
        budget: Budget,
        share: Share,
    ) -> Self {
        let (tx, pending) = mpsc::channel(QUEUE);
        let wanted = Arc::new(Wanted::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let stream = Stream {
            expected,
            level,
            budget,
            share,
            tx,
            wanted: wanted.clone(),
            dropped: dropped.clone(),
        };
        let task = tokio::spawn(stream.run(reader));
        Deflation {
            pending,
            current: Vec::new(),
            at: 0,
            held: None,
            end: None,
            finished: false,
            wanted,
            dropped,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Up to `max` compressed bytes; empty at the end.
    pub async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        while self.at == self.current.len() {
            // The chunk handed out goes with what it held.
            self.current = Vec::new();
            self.at = 0;
            self.held = None;
            if self.end.is_some() {
                self.finished = true;
                return Ok(Vec::new());
            }
            self.wanted.now.store(true, Ordering::Release);
            self.wanted.bell.notify_one();
            let next = self.pending.recv().await;
            self.wanted.now.store(false, Ordering::Release);
            let pending = next.ok_or_else(|| {
                BlobError::Unavailable("deflating: the stream stopped".to_string())
            })??;
            self.current = pending
                .job
                .await
                .map_err(|err| BlobError::Unavailable(format!("deflating: {err}")))??;
            self.at = 0;
            self.held = Some(pending.held);
            self.end = pending.end;
        }
        let n = max.min(self.current.len() - self.at);
        let chunk = self.current[self.at..self.at + n].to_vec();
        self.at += n;
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
        self.dropped.store(true, Ordering::Release);
    }
}

/// The reading side of a stream: it reads the object chunk by chunk and
/// starts each chunk's compression.
struct Stream {
    expected: u64,
    level: u32,
    budget: Budget,
    share: Share,
    tx: mpsc::Sender<Result<Pending, BlobError>>,
    wanted: Arc<Wanted>,
    dropped: Arc<AtomicBool>,
}

impl Stream {
    async fn run(self, reader: Box<dyn BlobReader>) {
        if let Err(err) = self.read_all(reader).await {
            let _ = self.tx.send(Err(err)).await;
        }
    }

    async fn read_all(&self, mut reader: Box<dyn BlobReader>) -> Result<(), BlobError> {
        let uri = reader.info().uri.clone();
        let changed = |seen: u64| {
            BlobError::Invalid(format!(
                "`{uri}` changed while it was deflated: {seen} bytes where {} were expected",
                self.expected
            ))
        };
        let mut crc = crc32fast::Hasher::new();
        let mut total = 0u64;
        loop {
            let left = self.expected.saturating_sub(total).min(CHUNK as u64);
            let held = self.hold(worst_case(left)).await;
            // One byte past what is left is enough to see the object grew.
            let want = usize::try_from(left).map_or(CHUNK, |left| (left + 1).min(CHUNK));
            let chunk = fill(reader.as_mut(), want).await?;
            total += chunk.len() as u64;
            let end = chunk.len() < CHUNK;
            if total > self.expected || (end && total != self.expected) {
                return Err(changed(total));
            }
            crc.update(&chunk);
            let (share, level, dropped) = (self.share.clone(), self.level, self.dropped.clone());
            let job = tokio::spawn(async move {
                let stopping = |_| BlobError::Unavailable("deflating: the host is stopping".into());
                let turn = share.cpu.acquire_owned().await.map_err(stopping)?;
                let permit = cpu().clone().acquire_owned().await.map_err(stopping)?;
                // The permits go with the work: a compression that outlives
                // its stream still counts until it stops.
                tokio::task::spawn_blocking(move || {
                    let _held = (turn, permit);
                    deflate_chunk(&chunk, level, &dropped)
                })
                .await
                .map_err(|err| BlobError::Unavailable(format!("deflating: {err}")))?
            });
            let pending = Pending {
                job: AbortOnDropHandle::new(job),
                held,
                end: end.then(|| Checksum {
                    crc32: crc.clone().finalize(),
                    size: total,
                }),
            };
            if self.tx.send(Ok(pending)).await.is_err() || end {
                return Ok(());
            }
        }
    }

    /// Reserves `bytes` in the message's budget; while it is full, waits
    /// until a reservation is given back, or until the processor waits for
    /// this stream with nothing queued, and then takes the message's
    /// overdraft (the processor takes that chunk at once).
    async fn hold(&self, bytes: u64) -> Held {
        loop {
            let freed = self.budget.freed().notified();
            let wanted = self.wanted.bell.notified();
            if let Ok(held) = self
                .budget
                .reserve_for_reading(bytes, "chunks being deflated")
            {
                return Held::Reserved(held);
            }
            if self.wanted.now.load(Ordering::Acquire)
                && self.tx.capacity() == self.tx.max_capacity()
                && let Ok(permit) = self.share.overdraft.clone().try_acquire_owned()
            {
                return Held::Overdraft(permit);
            }
            // A reservation given back, or the processor starting to wait;
            // the timeout covers room freed without a word (a reservation
            // refused halfway gives back what it took silently) and an
            // overdraft given back.
            tokio::select! {
                () = freed => {}
                () = wanted => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

/// One chunk deflated on its own, ending with a sync flush: byte-aligned,
/// with no final block, which the container's writer adds after the last.
/// Stops early, failing, once the stream is dropped.
fn deflate_chunk(chunk: &[u8], level: u32, dropped: &AtomicBool) -> Result<Vec<u8>, BlobError> {
    let failed = |err: std::io::Error| BlobError::Unavailable(format!("deflating: {err}"));
    let mut encoder = DeflateEncoder::new(
        Vec::with_capacity(chunk.len() / 2 + 64),
        Compression::new(level),
    );
    for slice in chunk.chunks(SLICE) {
        if dropped.load(Ordering::Acquire) {
            return Err(BlobError::Unavailable(
                "deflating: the stream was dropped".into(),
            ));
        }
        encoder.write_all(slice).map_err(failed)?;
    }
    encoder.flush().map_err(failed)?;
    // What the encoder would add when dropped goes into the vector it
    // drops, not into the stream.
    Ok(std::mem::take(encoder.get_mut()))
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
    use guest_compress::archive::{InlineDeflated, ObjectDeflated, ObjectReader, StoreError};
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

    /// An object as compress's own code reads it.
    struct Slice(Vec<u8>, usize);

    impl ObjectReader for Slice {
        fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
            let end = (self.1 + max as usize).min(self.0.len());
            let chunk = self.0[self.1..end].to_vec();
            self.1 = end;
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
                    Deflation::start(reader, len as u64, 6, budget.clone(), Share::default()),
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
            // compress's own in-process stream, for stores that cannot
            // deflate, is the same stream.
            let mut inline = InlineDeflated::new(Slice(bytes.clone(), 0), 6);
            let mut here = Vec::new();
            loop {
                let bytes = inline.read(100_000).unwrap();
                if bytes.is_empty() {
                    break;
                }
                here.extend_from_slice(&bytes);
            }
            assert_eq!(here, streams[0], "{len} bytes");
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
            let err = drain(
                Deflation::start(reader, said, 6, budget.clone(), Share::default()),
                CHUNK,
            )
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
                Deflation::start(
                    reader,
                    noise.len() as u64,
                    6,
                    budget.clone(),
                    Share::default(),
                )
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
        // Without the budget all 64 chunks would wait.
        let queued: usize = ahead.iter().map(|d| d.pending.len()).sum();
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

    #[test]
    fn levels_are_1_to_9() {
        assert_eq!(level(1).unwrap(), 1);
        assert_eq!(level(9).unwrap(), 9);
        for bad in [0, 10, 255] {
            let err = level(bad).unwrap_err();
            assert!(
                matches!(&err, BlobError::Invalid(m) if m.contains(&format!("level {bad} is not 1-9"))),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_chunk_of_a_dropped_stream_stops() {
        let chunk = text(CHUNK);
        let whole = deflate_chunk(&chunk, 6, &AtomicBool::new(false)).unwrap();
        assert_eq!(inflate(&whole), chunk);
        let err = deflate_chunk(&chunk, 6, &AtomicBool::new(true)).unwrap_err();
        assert!(
            matches!(&err, BlobError::Unavailable(m) if m.contains("dropped")),
            "{err:?}"
        );
    }
}
