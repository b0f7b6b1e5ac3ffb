//! Objects a processor said it will open soon (`blobs.prefetch`), opened
//! ahead by the host. At most [`WINDOW`] are opened ahead at once, each on
//! a task of its own, so that their round trips overlap instead of adding
//! up; as the processor takes one, the next hinted object starts. A hinted
//! object is opened exactly as `open` would (grants were checked when it was
//! hinted); whatever it ends in, success or error, is what `stat` and
//! `open` on that URI then report.

use crate::blobs::{BlobError, BlobReader, BlobStore, BlobUri, Budget, ObjectInfo};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Objects opened ahead at once, per message.
pub const WINDOW: usize = 64;
/// Hinted objects waiting their turn, per message; more are ignored (a
/// hint only saves time). A processor with more inputs names the next ones
/// as it takes these, as `compress` does.
pub const MAX_WAITING: usize = 10_000;
/// The most URI text (bucket and key) the waiting hints may hold, per
/// message: with [`MAX_WAITING`], the hints kept cost a message a few MiB
/// of host memory at most. (The list a call passes is copied before the
/// host sees it; [`super::MAX_CALL_BYTES`] bounds that copy.)
pub const MAX_WAITING_BYTES: usize = 1 << 20;

type Opened = Result<Box<dyn BlobReader>, BlobError>;

enum Ahead {
    Opening(JoinHandle<Opened>),
    Opened(Opened),
}

impl Ahead {
    /// Waits for the open to end, and keeps what it ended in.
    async fn settle(&mut self) -> &Opened {
        if let Ahead::Opening(task) = self {
            let opened = match task.await {
                Ok(opened) => opened,
                Err(err) => Err(BlobError::Unavailable(format!("opening ahead: {err}"))),
            };
            *self = Ahead::Opened(opened);
        }
        match self {
            Ahead::Opened(opened) => opened,
            Ahead::Opening(_) => unreachable!("settled above"),
        }
    }
}

/// One message's objects opened ahead.
#[derive(Default)]
pub struct Prefetcher {
    ahead: HashMap<BlobUri, VecDeque<Ahead>>,
    /// How many entries `ahead` holds.
    count: usize,
    waiting: VecDeque<BlobUri>,
    /// The URI text `waiting` holds.
    waiting_bytes: usize,
}

fn text_len(uri: &BlobUri) -> usize {
    uri.bucket().len() + uri.key().len()
}

impl Prefetcher {
    /// Takes hinted objects (in the order they will be opened) while there
    /// is room for them, ignores the rest, and starts opening as many as
    /// the window allows. `uris` is drawn only as far as there is room.
    pub fn hint(
        &mut self,
        uris: impl IntoIterator<Item = BlobUri>,
        store: &Arc<dyn BlobStore>,
        budget: &Budget,
    ) {
        for uri in uris {
            let bytes = text_len(&uri);
            if self.waiting.len() >= MAX_WAITING || self.waiting_bytes + bytes > MAX_WAITING_BYTES {
                break;
            }
            self.waiting_bytes += bytes;
            self.waiting.push_back(uri);
        }
        self.fill(store, budget);
    }

    /// Whether another hint would be kept at all.
    pub fn has_room(&self) -> bool {
        self.waiting.len() < MAX_WAITING && self.waiting_bytes < MAX_WAITING_BYTES
    }

    fn fill(&mut self, store: &Arc<dyn BlobStore>, budget: &Budget) {
        while self.count < WINDOW {
            let Some(uri) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_bytes -= text_len(&uri);
            let (store, budget, target) = (store.clone(), budget.clone(), uri.clone());
            let task = tokio::spawn(async move { store.open(&target, &budget).await });
            self.ahead
                .entry(uri)
                .or_default()
                .push_back(Ahead::Opening(task));
            self.count += 1;
        }
    }

    /// What the next object opened ahead for `uri` knows of itself, or its
    /// error; `None` when none was hinted (or all were taken).
    pub async fn info(&mut self, uri: &BlobUri) -> Option<Result<ObjectInfo, BlobError>> {
        let next = self.ahead.get_mut(uri)?.front_mut()?;
        Some(match next.settle().await {
            Ok(reader) => Ok(reader.info().clone()),
            Err(err) => Err(err.clone()),
        })
    }

    /// The next object opened ahead for `uri`, once open, or `None`.
    pub async fn take(
        &mut self,
        uri: &BlobUri,
        store: &Arc<dyn BlobStore>,
        budget: &Budget,
    ) -> Option<Opened> {
        let queue = self.ahead.get_mut(uri)?;
        let mut next = queue.pop_front()?;
        if queue.is_empty() {
            self.ahead.remove(uri);
        }
        self.count -= 1;
        self.fill(store, budget);
        next.settle().await;
        match next {
            Ahead::Opened(opened) => Some(opened),
            Ahead::Opening(_) => unreachable!("settled above"),
        }
    }
}

impl Drop for Prefetcher {
    /// Opens still under way when the message ends are stopped.
    fn drop(&mut self) {
        for queue in self.ahead.values() {
            for ahead in queue {
                if let Ahead::Opening(task) = ahead {
                    task.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn BlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::blobs::sign::LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let blobs = crate::blobs::LocalBlobs::new(dir.path(), signer).unwrap();
        (dir, Arc::new(blobs))
    }

    fn uris(count: usize, key_len: usize) -> impl Iterator<Item = BlobUri> {
        (0..count).map(move |i| {
            let key = format!("{i:0>key_len$}");
            BlobUri::parse(&format!("s3://docs/{key}")).unwrap()
        })
    }

    #[tokio::test]
    async fn hints_past_their_room_are_ignored_and_not_even_drawn() {
        let (_dir, store) = store();
        let budget = Budget::default();
        let mut ahead = Prefetcher::default();
        let mut drawn = 0;
        ahead.hint(uris(50_000, 8).inspect(|_| drawn += 1), &store, &budget);
        assert_eq!(ahead.waiting.len() + ahead.count, MAX_WAITING);
        assert_eq!(ahead.count, WINDOW);
        assert_eq!(drawn, MAX_WAITING + 1, "drawn past the room");
        // The window's opens made room for as many more, no more.
        ahead.hint(uris(100, 8), &store, &budget);
        assert_eq!(ahead.waiting.len(), MAX_WAITING);
        assert!(!ahead.has_room());

        // Long keys: the text bound comes first.
        let mut ahead = Prefetcher::default();
        ahead.hint(uris(5_000, 1000), &store, &budget);
        let kept = ahead.waiting.len() + ahead.count;
        assert!(ahead.waiting_bytes <= MAX_WAITING_BYTES);
        assert!(kept < 1_200, "{kept} hints of 1 KB kept");
        assert!(kept > 1_000, "{kept} hints of 1 KB kept");

        // Taking one makes room for more, and the text is counted down.
        let first = uris(1, 1000).next().unwrap();
        drop(ahead.take(&first, &store, &budget).await);
        let before = ahead.waiting_bytes;
        assert!(before <= MAX_WAITING_BYTES);
        let waiting: usize = ahead.waiting.iter().map(text_len).sum();
        assert_eq!(waiting, before);
    }
}
