//! Message queues behind one small trait with SQS's semantics: receive with
//! long polling and a visibility timeout, delete and change visibility in
//! batches by receipt, send with delay and FIFO groups, and a redrive policy
//! that moves a message to its dead-letter queue after too many receives.
//! [`Queue`] is one queue as the dispatcher uses it; [`QueueAdmin`] is a
//! backend's queues as an operator manages them (create, set, list, purge,
//! peek, redrive). A backend is one module here implementing both.

pub mod local;
pub mod sqs;

pub use local::LocalQueues;
pub use sqs::SqsQueues;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// SQS's limits, kept by every backend.
pub const MAX_BATCH: usize = 10;
pub const MAX_WAIT: Duration = Duration::from_secs(20);
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// The largest message, body and attributes together: 1 MiB, as SQS takes
/// since August 2025 (an SQS queue's own `MaximumMessageSize` may be less).
pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_ATTRIBUTES: usize = 10;
/// The attribute that names the queue a dead letter came from.
pub const SOURCE_ATTRIBUTE: &str = "wasq-source-queue";
/// Why wasq dead-lettered a message.
pub const REASON_ATTRIBUTE: &str = "wasq-reason";
/// The processor that dead-lettered a message.
pub const PLUGIN_ATTRIBUTE: &str = "wasq-plugin";
/// The attribute that names the message a dead letter was (sealed: see
/// `dispatch::seal`).
pub const MESSAGE_ID_ATTRIBUTE: &str = "wasq-message-id";
/// How long a FIFO deduplication id is remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// A message as received: the fields a processor sees and the receipt that
/// settles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    /// Identifies this delivery; deleting or changing visibility needs it.
    pub receipt: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
    /// Receives the queue has counted, this one included.
    pub receive_count: u32,
    /// Of those, receives the host gave back unstarted that the queue
    /// could not take back (SQS counts every receive): no attempts.
    pub given_back: u32,
    pub sent_at_ms: u64,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    /// The queue this message was moved from by a queue's own redrive
    /// policy (not by wasq): its attributes are all its sender's, any
    /// `wasq-*` ones included.
    pub moved_from: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub delay: Duration,
    /// Required on FIFO queues, refused on standard ones.
    pub group_id: Option<String>,
    /// FIFO only; defaults to a hash of the body.
    pub dedup_id: Option<String>,
}

/// A queue's settings when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays hidden when the receiver names no
    /// visibility timeout.
    pub visibility_timeout: Duration,
    pub redrive: Option<Redrive>,
}

impl Default for QueueOptions {
    /// Three minutes: six times a processor's default 30 s timeout, as a
    /// binding's visibility must exceed its processor's timeout.
    fn default() -> Self {
        QueueOptions {
            visibility_timeout: DEFAULT_VISIBILITY,
            redrive: None,
        }
    }
}

/// A new queue's visibility timeout.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(180);

/// A dead letter as `wasq dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub id: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub receive_count: u32,
    pub sent_at_ms: u64,
    pub source_queue: Option<String>,
    /// Moved here by the queue's own redrive policy, not dead-lettered by
    /// wasq: its `wasq-*` attributes, if any, are its sender's.
    pub moved_by_queue: bool,
}

/// Changes to a queue's settings; what is `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChanges {
    pub visibility_timeout: Option<Duration>,
    /// The receive count of its redrive policy (which it must have, or be
    /// given with `dlq`).
    pub max_receive_count: Option<u32>,
    /// A dead-letter queue for its redrive policy, created if need be; the
    /// receive count stays (5 for a queue that had no policy) unless given.
    pub dlq: Option<String>,
}

/// The receive count of a redrive policy nobody chose.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// Where a queue's dead letters go, and after how many receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The dead-letter queue's name.
    pub dlq: String,
    pub max_receive_count: u32,
}

/// What a queue is and holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub name: String,
    pub fifo: bool,
    pub visibility_timeout: Duration,
    pub redrive: Option<Redrive>,
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet settled.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    pub delayed: u64,
}

/// One entry of a batch operation that failed, by its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    pub receipt: String,
    pub reason: String,
}

/// Why a queue operation failed; the message names the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue `{0}` does not exist")]
    NoSuchQueue(String),
    #[error("access denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// How [`Queue::dead_letter`] moved a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Sent to the dead-letter queue and deleted from its own in one step.
    Moved,
    /// Sent to the dead-letter queue; the caller deletes it from its own.
    Sent,
    /// The receipt is no longer current (the message was received again or
    /// deleted): nothing was sent.
    Stale,
}

/// One queue.
///
/// What every backend guarantees, and nothing more:
/// - Batch calls take 0–10 entries; an empty batch does nothing and is
///   `Ok`.
/// - A batch that fails as a whole (`Err`) may still have done part of its
///   work: SQS answers per entry, so some entries may have been applied.
///   A caller that retries must tolerate a message applied twice.
/// - A receive returns when a message arrives, the wait passes, or
///   `cancel` fires; no message is lost to a cancel.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The queue's name.
    fn name(&self) -> &str;

    /// Whether it is a FIFO queue: groups in order, deduplication.
    fn is_fifo(&self) -> bool;

    /// For backends that recognise their own queues (to move messages
    /// between them in one step).
    fn as_any(&self) -> &dyn std::any::Any;

    /// The largest message it takes, body and attributes together (SQS:
    /// the queue's `MaximumMessageSize`).
    fn max_message_size(&self) -> usize {
        MAX_BODY
    }

    /// Up to `max` messages (1–10), waiting up to `wait` for the first one to
    /// arrive, or until `cancel` fires. Each is hidden from other receivers
    /// for `visibility`. A cancelled receive returns at once, and nothing
    /// it took is lost: what it already holds is returned, and what a
    /// server hands over after the cancel is made visible again.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, QueueError>;

    /// Deletes messages by receipt; returns the entries that failed.
    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchFailure>, QueueError>;

    /// Sets when each message becomes visible again, counted from now;
    /// returns the entries that failed.
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<BatchFailure>, QueueError>;

    /// Makes received messages visible again at once, for the host's own
    /// reasons: it took them and could not start them (a pause, a
    /// shutdown, a removed plugin, a FIFO group held back). The message
    /// loses no attempt: the embedded queue takes the receive back; SQS,
    /// which counts every receive, remembers it and reports it as
    /// [`Received::given_back`] when the message comes again. Returns the
    /// entries that failed.
    async fn give_back(&self, messages: &[Received]) -> Result<Vec<BatchFailure>, QueueError>;

    /// Whether the queue's own count of receives, which its redrive policy
    /// goes by, includes those given back (SQS).
    fn counts_given_back(&self) -> bool {
        false
    }

    /// Sends a message; returns its id. On FIFO queues a duplicate within the
    /// deduplication window returns the first message's id and adds nothing.
    async fn send(&self, message: Outgoing) -> Result<String, QueueError>;

    /// Sends up to ten messages at once; returns their ids in order. On
    /// `Ok` every one was sent. On `Err` any of them may have been sent
    /// (the embedded queue sends all or none; SQS sends entry by entry,
    /// and an entry it refuses is tried once more on its own).
    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, QueueError>;

    /// Moves a received message to `dlq` as `letter`. When both queues
    /// live in one embedded database, the send and the delete are one
    /// transaction. Otherwise (SQS) the letter is sent and the caller
    /// deletes the message: a crash between the two sends it again when
    /// it comes back. The letter carries the message's id, so that FIFO
    /// dead-letter queues deduplicate it and `wasq dlq redrive` moves each
    /// id once.
    async fn dead_letter(
        &self,
        receipt: &str,
        dlq: &dyn Queue,
        letter: Outgoing,
    ) -> Result<Moved, QueueError> {
        let _ = receipt;
        dlq.send(letter).await?;
        Ok(Moved::Sent)
    }

    /// Counts and settings.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Finishes what the queue still does in the background (on SQS, the
    /// release of what a cancelled receive's poll took), waiting at most
    /// for one long poll and a few seconds more.
    async fn close(&self) {}
}

/// The queues of one backend, managed as an operator manages them:
/// everything `wasq queue`, `wasq dlq` and a binding need beyond [`Queue`].
/// A queue is named as its backend names it (on SQS, a name or a URL).
#[async_trait]
pub trait QueueAdmin: Send + Sync {
    /// A queue that exists.
    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError>;

    /// Creates a queue, and its dead-letter queue if that does not exist;
    /// returns the queue's address as its backend gives it (SQS: its URL).
    /// A queue that exists with the same settings is left as it is; one
    /// with other settings is refused ([`QueueAdmin::set`] changes them).
    async fn create(&self, name: &str, options: QueueOptions) -> Result<String, QueueError>;

    /// Changes a queue's settings; returns them after.
    async fn set(&self, name: &str, changes: QueueChanges) -> Result<QueueStats, QueueError>;

    /// Every queue, as addresses (`local://NAME`, or SQS URLs).
    async fn list(&self) -> Result<Vec<String>, QueueError>;

    /// Deletes every message; returns how many there were (on SQS,
    /// approximately).
    async fn purge(&self, name: &str) -> Result<u64, QueueError>;

    /// Up to `max` messages, looked at and left in place.
    async fn peek(&self, name: &str, max: usize) -> Result<Vec<Peeked>, QueueError>;

    /// The dead-letter queue a queue's redrive policy names, if any.
    async fn dead_letter_queue(&self, name: &str) -> Result<Option<String>, QueueError>;

    /// Moves the messages of dead-letter queue `dlq` back to `to`; returns
    /// how many moved, or `None` when the service moves them on its own
    /// (SQS's message move task).
    async fn redrive(&self, dlq: &str, to: &str) -> Result<Option<u64>, QueueError>;

    /// Moves the dead letters of `dlq` with these ids back to the queue
    /// each came from, or deletes them; returns how many it acted on. Ids
    /// not found are skipped. The embedded queue does it in one
    /// transaction. SQS has no way to reach a message by id: the queue is
    /// received through (at most [`SCAN_CAP`] letters), the chosen ones
    /// acted on, and the rest made visible again at once, one receive
    /// added to their counts. Each letter acted on is added to `progress`
    /// as it goes (on SQS ten at a time; the embedded queue's one
    /// transaction adds them all at its end).
    async fn settle_letters(
        &self,
        dlq: &str,
        ids: &[String],
        action: LetterAction,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, QueueError>;

    /// A page of the letters of `name` that `filter` picks, oldest first,
    /// and how many it picks in all. The embedded queue searches every
    /// letter in place, through its full-text index; this default (SQS)
    /// looks at the first
    /// [`LOOK_CAP`] letters as `peek` does (a receive each, made visible
    /// again at once).
    async fn browse(
        &self,
        name: &str,
        filter: &LetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<LetterPage, QueueError> {
        let looked = self.peek(name, LOOK_CAP).await?;
        let whole = looked.len() < LOOK_CAP;
        let picked: Vec<Peeked> = looked.into_iter().filter(|l| filter.matches(l)).collect();
        Ok(LetterPage {
            matched: picked.len() as u64,
            letters: picked.into_iter().skip(offset).take(limit).collect(),
            whole,
        })
    }

    /// The ids of the letters of `name` that `filter` picks, oldest first,
    /// at most `cap`.
    async fn matching_ids(
        &self,
        name: &str,
        filter: &LetterFilter,
        cap: usize,
    ) -> Result<Vec<String>, QueueError> {
        Ok(self
            .browse(name, filter, 0, cap)
            .await?
            .letters
            .into_iter()
            .map(|l| l.id)
            .collect())
    }
}

/// The most letters the default [`QueueAdmin::browse`] looks at: on SQS
/// each look adds a receive to every letter it reads.
pub const LOOK_CAP: usize = 2_000;

/// Which dead letters a look picks; every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LetterFilter {
    /// Words that must each appear in the body or in wasq's reason, ASCII
    /// case aside.
    pub words: Vec<String>,
    /// The processor that dead-lettered it (wasq's `wasq-plugin`).
    pub plugin: Option<String>,
    /// Text in wasq's reason, ASCII case aside.
    pub reason: Option<String>,
    /// One letter, by id.
    pub id: Option<String>,
    /// Sent (to the dead-letter queue, or by its producer for a letter the
    /// queue's redrive moved) at or after this time, in ms since the epoch.
    pub sent_from_ms: Option<u64>,
    /// Sent before this time, in ms since the epoch.
    pub sent_before_ms: Option<u64>,
}

impl LetterFilter {
    /// Whether `letter` is picked. A letter the queue's own redrive moved
    /// carries only its sender's attributes: it has no wasq reason or
    /// processor, whatever its attributes are named.
    pub fn matches(&self, letter: &Peeked) -> bool {
        let wasq = |name: &str| {
            (!letter.moved_by_queue)
                .then(|| letter.attributes.iter().find(|(n, _)| n == name))
                .flatten()
                .map(|(_, v)| v.as_str())
        };
        let reason = wasq(REASON_ATTRIBUTE).unwrap_or("").to_ascii_lowercase();
        let body = letter.body.to_ascii_lowercase();
        self.words.iter().all(|word| {
            let word = word.to_ascii_lowercase();
            body.contains(&word) || reason.contains(&word)
        }) && self
            .plugin
            .as_deref()
            .is_none_or(|p| wasq(PLUGIN_ATTRIBUTE) == Some(p))
            && self
                .reason
                .as_deref()
                .is_none_or(|r| reason.contains(&r.to_ascii_lowercase()))
            && self.id.as_deref().is_none_or(|id| letter.id == id)
            && self
                .sent_from_ms
                .is_none_or(|from| letter.sent_at_ms >= from)
            && self
                .sent_before_ms
                .is_none_or(|before| letter.sent_at_ms < before)
    }
}

/// A page of picked letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LetterPage {
    pub letters: Vec<Peeked>,
    /// How many letters the filter picks in all (of those looked at).
    pub matched: u64,
    /// Whether every letter of the queue was looked at.
    pub whole: bool,
}

/// What becomes of chosen dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterAction {
    /// Back to the queue each came from, as a new delivery.
    Redrive,
    /// Gone.
    Delete,
}

/// The most letters an SQS dead-letter queue is received through to find
/// chosen ones, or to be searched.
pub const SCAN_CAP: usize = 10_000;

/// A message's size as SQS counts it against its limit: the body, and each
/// attribute's name, type (`String`) and value.
pub fn message_size(message: &Outgoing) -> usize {
    message.body.len()
        + message
            .attributes
            .iter()
            .map(|(name, value)| name.len() + "String".len() + value.len())
            .sum::<usize>()
}

/// Checks a message before it is sent to a queue that takes messages of at
/// most `limit` bytes.
pub fn check_outgoing(
    queue: &str,
    fifo: bool,
    limit: usize,
    message: &Outgoing,
) -> Result<(), QueueError> {
    let invalid = |why: String| Err(QueueError::Invalid(format!("queue `{queue}`: {why}")));
    if message.body.is_empty() {
        return invalid("the message body is empty".into());
    }
    if message.body.len() > limit {
        return invalid(format!(
            "the message body is {} bytes; the queue takes at most {limit}",
            message.body.len()
        ));
    }
    if message_size(message) > limit {
        return invalid(format!(
            "the message is {} bytes with its attributes; the queue takes at most {limit}",
            message_size(message)
        ));
    }
    if message.attributes.len() > MAX_ATTRIBUTES {
        return invalid(format!(
            "at most {MAX_ATTRIBUTES} message attributes are allowed"
        ));
    }
    if let Some((name, _)) = message
        .attributes
        .iter()
        .find(|(name, _)| !valid_attribute_name(name))
    {
        return invalid(format!(
            "attribute name `{name}` must be 1-256 letters, digits, `_`, `-` or `.`"
        ));
    }
    if message.delay > MAX_DELAY {
        return invalid(format!(
            "a delay of {}s is over the 900s maximum",
            message.delay.as_secs()
        ));
    }
    match (fifo, &message.group_id) {
        (true, None) => return invalid("FIFO queues need a message group id".into()),
        (false, Some(_)) => return invalid("only FIFO queues take a message group id".into()),
        (false, None) if message.dedup_id.is_some() => {
            return invalid("only FIFO queues take a deduplication id".into());
        }
        (true, Some(group)) if group.is_empty() || group.len() > 128 => {
            return invalid("message group ids are 1-128 characters".into());
        }
        _ => {}
    }
    if fifo && !message.delay.is_zero() {
        return invalid("FIFO queues do not take a per-message delay".into());
    }
    Ok(())
}

fn valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Queue names: 1–80 letters, digits, `-` and `_`, plus `.fifo` at the end
/// of a FIFO queue's name (SQS's rule).
pub fn check_name(name: &str) -> Result<bool, QueueError> {
    let (stem, fifo) = match name.strip_suffix(".fifo") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let ok = !stem.is_empty()
        && name.len() <= 80
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(fifo)
    } else {
        Err(QueueError::Invalid(format!(
            "`{name}` is not a valid queue name (1-80 letters, digits, `-` or `_`, ending `.fifo` for FIFO queues)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_sqs_rules() {
        assert_eq!(check_name("jobs"), Ok(false));
        assert_eq!(check_name("jobs-dlq_2.fifo"), Ok(true));
        for bad in [
            "",
            ".fifo",
            "a b",
            "x".repeat(81).as_str(),
            "jobs.fifo.fifo",
            "../x",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outgoing_messages_are_checked() {
        let ok = Outgoing {
            body: "x".into(),
            ..Outgoing::default()
        };
        assert!(check_outgoing("q", false, MAX_BODY, &ok).is_ok());
        let cases = [
            (
                false,
                Outgoing {
                    body: String::new(),
                    ..ok.clone()
                },
                "body is empty",
            ),
            (
                false,
                Outgoing {
                    body: "x".repeat(MAX_BODY + 1),
                    ..ok.clone()
                },
                "the queue takes at most 1048576",
            ),
            (
                false,
                Outgoing {
                    delay: Duration::from_secs(901),
                    ..ok.clone()
                },
                "900s maximum",
            ),
            (true, ok.clone(), "need a message group id"),
            (
                false,
                Outgoing {
                    group_id: Some("g".into()),
                    ..ok.clone()
                },
                "only FIFO queues take a message group",
            ),
            (
                true,
                Outgoing {
                    group_id: Some("g".into()),
                    delay: Duration::from_secs(1),
                    ..ok.clone()
                },
                "per-message delay",
            ),
            (
                false,
                Outgoing {
                    attributes: vec![("bad name".into(), "v".into())],
                    ..ok.clone()
                },
                "attribute name",
            ),
        ];
        for (fifo, message, expected) in cases {
            let err = check_outgoing("q", fifo, MAX_BODY, &message)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected) && err.contains("queue `q`"), "{err}");
        }
    }
}
