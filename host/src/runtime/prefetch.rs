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
/// Hinted objects waiting their turn, per message; more are ignored.
pub const MAX_WAITING: usize = 100_000;

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
}

impl Prefetcher {
    /// Takes hinted objects (in the order they will be opened) and starts
    /// opening as many as the window allows.
    pub fn hint(
        &mut self,
        uris: impl IntoIterator<Item = BlobUri>,
        store: &Arc<dyn BlobStore>,
        budget: &Budget,
    ) {
        let room = MAX_WAITING.saturating_sub(self.waiting.len());
        self.waiting.extend(uris.into_iter().take(room));
        self.fill(store, budget);
    }

    fn fill(&mut self, store: &Arc<dyn BlobStore>, budget: &Budget) {
        while self.count < WINDOW {
            let Some(uri) = self.waiting.pop_front() else {
                break;
            };
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
