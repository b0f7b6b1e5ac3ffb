//! Amazon SQS (or an SQS-compatible server) behind the [`Queue`] trait.
//!
//! Receives long-poll and ask for every system and message attribute;
//! deletes and visibility changes go in batches of ten. A queue's redrive
//! policy says where its dead letters go and after how many receives. A
//! receive cancelled mid-poll returns at once, but its poll is not
//! dropped: SQS may hand messages to a poll its client has abandoned,
//! hiding them for a whole visibility timeout, so the poll runs to its end
//! in the background and whatever it took is made visible again.

use super::{
    BatchFailure, MAX_BATCH, Outgoing, Peeked, Queue, QueueAdmin, QueueChanges, QueueError,
    QueueOptions, QueueStats, Received, Redrive, check_outgoing,
};
use crate::aws::{AwsOptions, Failure, classify};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use sha2::Digest as _;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The SQS queues one set of credentials reaches.
#[derive(Clone, Debug)]
pub struct SqsQueues {
    client: Client,
}

fn error<E>(queue: &str, err: &SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match classify(&format!("queue `{queue}`"), err) {
        Failure::Missing(_) => QueueError::NoSuchQueue(queue.to_string()),
        Failure::Denied(text) => QueueError::Denied(text),
        Failure::Invalid(text) => QueueError::Invalid(text),
        Failure::Unavailable(text) => QueueError::Unavailable(text),
    }
}

/// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` → `NAME`.
pub fn name_of(url_or_name: &str) -> &str {
    url_or_name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url_or_name)
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` → (`ACCOUNT`, `NAME`).
fn parse_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.split(':');
    let (_, _, service, _, account, name) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (service == "sqs").then_some((account, name))
}

/// SQS's redrive policy, as JSON in the queue's attributes.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RedrivePolicy {
    dead_letter_target_arn: String,
    #[serde(deserialize_with = "number_or_string")]
    max_receive_count: u32,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u32),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

use serde::Deserialize as _;

/// A redrive policy as a queue's attributes give it.
struct RedriveTarget {
    account: String,
    /// The dead-letter queue's name.
    name: String,
    max_receive_count: u32,
}

/// The redrive policy among `queue`'s attributes, if it has one.
fn redrive_in(
    queue: &str,
    attributes: &HashMap<QueueAttributeName, String>,
) -> Result<Option<RedriveTarget>, QueueError> {
    let Some(text) = attributes.get(&QueueAttributeName::RedrivePolicy) else {
        return Ok(None);
    };
    let policy: RedrivePolicy = serde_json::from_str(text).map_err(|err| {
        QueueError::Invalid(format!(
            "queue `{queue}`: redrive policy `{text}` is not understood: {err}"
        ))
    })?;
    let (account, name) = parse_arn(&policy.dead_letter_target_arn).ok_or_else(|| {
        QueueError::Invalid(format!(
            "queue `{queue}`: dead-letter target `{}` is not an SQS ARN",
            policy.dead_letter_target_arn
        ))
    })?;
    Ok(Some(RedriveTarget {
        account: account.to_string(),
        name: name.to_string(),
        max_receive_count: policy.max_receive_count,
    }))
}

/// A queue's redrive policy, resolved: its dead-letter queue's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsRedrive {
    pub dlq_url: String,
    pub max_receive_count: u32,
}

impl SqsQueues {
    pub async fn connect(options: &AwsOptions) -> Self {
        SqsQueues::new(&options.load().await)
    }

    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SqsQueues {
            client: Client::new(config),
        }
    }

    /// The URL of a queue given by URL or by name.
    pub async fn url_of(&self, url_or_name: &str) -> Result<String, QueueError> {
        if url_or_name.starts_with("https://") || url_or_name.starts_with("http://") {
            return Ok(url_or_name.to_string());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(url_or_name)
            .send()
            .await
            .map_err(|err| error(url_or_name, &err))?;
        out.queue_url()
            .map(str::to_string)
            .ok_or_else(|| QueueError::NoSuchQueue(url_or_name.to_string()))
    }

    /// Opens a queue by URL or name, checking that it exists.
    pub async fn queue(&self, url_or_name: &str) -> Result<SqsQueue, QueueError> {
        let url = self.url_of(url_or_name).await?;
        let name = name_of(&url).to_string();
        let attributes = self.attributes(&url).await?;
        let fifo = attributes
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|v| v == "true")
            || name.ends_with(".fifo");
        let max_message_size = attributes
            .get(&QueueAttributeName::MaximumMessageSize)
            .and_then(|v| v.parse().ok())
            .unwrap_or(super::MAX_BODY);
        Ok(SqsQueue {
            client: self.client.clone(),
            url,
            name,
            fifo,
            max_message_size,
            releases: tokio_util::task::TaskTracker::new(),
            given_back: Default::default(),
        })
    }

    async fn attributes(
        &self,
        url: &str,
    ) -> Result<HashMap<QueueAttributeName, String>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|err| error(name_of(url), &err))?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }

    /// The queue's redrive policy, with its dead-letter queue's URL.
    pub async fn redrive_policy(&self, url: &str) -> Result<Option<SqsRedrive>, QueueError> {
        let attributes = self.attributes(url).await?;
        let Some(target) = redrive_in(name_of(url), &attributes)? else {
            return Ok(None);
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(&target.name)
            .queue_owner_aws_account_id(&target.account)
            .send()
            .await
            .map_err(|err| error(&target.name, &err))?;
        Ok(Some(SqsRedrive {
            dlq_url: out.queue_url().unwrap_or_default().to_string(),
            max_receive_count: target.max_receive_count,
        }))
    }

    /// Creates a queue (FIFO when the name ends `.fifo`) and, with a
    /// redrive, its dead-letter queue first; returns the queue's URL. An
    /// existing queue with the same settings is left as it is.
    pub async fn create(&self, name: &str, options: QueueOptions) -> Result<String, QueueError> {
        let fifo = super::check_name(name)?;
        let mut attributes = HashMap::from([(
            QueueAttributeName::VisibilityTimeout,
            options.visibility_timeout.as_secs().to_string(),
        )]);
        if fifo {
            attributes.insert(QueueAttributeName::FifoQueue, "true".into());
        }
        if let Some(redrive) = &options.redrive {
            // A dead-letter queue that exists is used as it is.
            let dlq_url = match self.url_of(&redrive.dlq).await {
                Ok(url) => url,
                Err(QueueError::NoSuchQueue(_)) => {
                    Box::pin(self.create(redrive.dlq.as_str(), QueueOptions::default())).await?
                }
                Err(err) => return Err(err),
            };
            let arn = self
                .attributes(&dlq_url)
                .await?
                .remove(&QueueAttributeName::QueueArn)
                .ok_or_else(|| {
                    QueueError::Invalid(format!("queue `{}` has no ARN", redrive.dlq))
                })?;
            let policy = serde_json::to_string(&RedrivePolicy {
                dead_letter_target_arn: arn,
                max_receive_count: redrive.max_receive_count,
            })
            .expect("a redrive policy serialises");
            attributes.insert(QueueAttributeName::RedrivePolicy, policy);
        }
        let out = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|err| match err.code() {
                Some("QueueAlreadyExists" | "QueueNameExists") => QueueError::Invalid(format!(
                    "queue `{name}` already exists with other settings: `wasq queue set` changes a queue's settings"
                )),
                _ => error(name, &err),
            })?;
        Ok(out.queue_url().unwrap_or_default().to_string())
    }

    /// Changes a queue's settings (SetQueueAttributes); returns them after.
    pub async fn set(
        &self,
        url_or_name: &str,
        changes: QueueChanges,
    ) -> Result<QueueStats, QueueError> {
        let queue = self.queue(url_or_name).await?;
        let mut attributes = HashMap::new();
        if let Some(visibility) = changes.visibility_timeout {
            attributes.insert(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().to_string(),
            );
        }
        if changes.dlq.is_some() || changes.max_receive_count.is_some() {
            let current = self.attributes(&queue.url).await?;
            let old: Option<RedrivePolicy> = match current.get(&QueueAttributeName::RedrivePolicy) {
                Some(text) => Some(serde_json::from_str(text).map_err(|err| {
                    QueueError::Invalid(format!(
                        "queue `{}`: redrive policy `{text}` is not understood: {err}",
                        queue.name
                    ))
                })?),
                None => None,
            };
            let dead_letter_target_arn = match (&changes.dlq, &old) {
                (Some(dlq), _) => {
                    if super::check_name(name_of(dlq))? != queue.fifo {
                        return Err(QueueError::Invalid(format!(
                            "queue `{}`: its dead-letter queue `{dlq}` must be {} like it",
                            queue.name,
                            if queue.fifo { "FIFO" } else { "standard" }
                        )));
                    }
                    let dlq_url = match self.url_of(dlq).await {
                        Ok(url) => url,
                        Err(QueueError::NoSuchQueue(_)) => {
                            SqsQueues::create(self, dlq, QueueOptions::default()).await?
                        }
                        Err(err) => return Err(err),
                    };
                    self.attributes(&dlq_url)
                        .await?
                        .remove(&QueueAttributeName::QueueArn)
                        .ok_or_else(|| QueueError::Invalid(format!("queue `{dlq}` has no ARN")))?
                }
                (None, Some(old)) => old.dead_letter_target_arn.clone(),
                (None, None) => {
                    return Err(QueueError::Invalid(format!(
                        "queue `{}` has no redrive policy, so no receive count to set (give a dead-letter queue with --dlq)",
                        queue.name
                    )));
                }
            };
            let policy = RedrivePolicy {
                dead_letter_target_arn,
                max_receive_count: changes
                    .max_receive_count
                    .or(old.map(|p| p.max_receive_count))
                    .unwrap_or(super::DEFAULT_MAX_RECEIVE_COUNT),
            };
            attributes.insert(
                QueueAttributeName::RedrivePolicy,
                serde_json::to_string(&policy).expect("a redrive policy serialises"),
            );
        }
        if !attributes.is_empty() {
            self.client
                .set_queue_attributes()
                .queue_url(&queue.url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|err| error(&queue.name, &err))?;
        }
        queue.stats().await
    }

    /// Every queue's URL.
    pub async fn list(&self) -> Result<Vec<String>, QueueError> {
        let mut urls = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .list_queues()
                .set_next_token(next.take())
                .max_results(1000)
                .send()
                .await
                .map_err(|err| error("*", &err))?;
            urls.extend(out.queue_urls().iter().cloned());
            match out.next_token() {
                Some(token) => next = Some(token.to_string()),
                None => return Ok(urls),
            }
        }
    }

    /// Deletes every message; returns how many there were (approximately,
    /// as SQS counts).
    pub async fn purge(&self, url_or_name: &str) -> Result<u64, QueueError> {
        let queue = self.queue(url_or_name).await?;
        let stats = queue.stats().await?;
        self.client
            .purge_queue()
            .queue_url(&queue.url)
            .send()
            .await
            .map_err(|err| error(&queue.name, &err))?;
        Ok(stats.visible + stats.in_flight + stats.delayed)
    }

    /// Up to `max` messages, looked at and put back: each is received
    /// (which counts as a receive), then made visible again at once.
    pub async fn peek(&self, url_or_name: &str, max: usize) -> Result<Vec<Peeked>, QueueError> {
        let queue = self.queue(url_or_name).await?;
        let cancel = CancellationToken::new();
        let mut seen: Vec<Received> = Vec::new();
        while seen.len() < max {
            let batch = queue
                .receive(
                    (max - seen.len()).min(MAX_BATCH),
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                    &cancel,
                )
                .await?;
            if batch.is_empty() {
                break;
            }
            seen.extend(batch);
        }
        // Every chunk is made visible again, whatever one of them met.
        let mut released = Ok(());
        for chunk in seen.chunks(MAX_BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .map(|m| (m.receipt.clone(), Duration::ZERO))
                .collect();
            if let Err(err) = queue.change_visibility_batch(&entries).await {
                released = Err(err);
            }
        }
        released?;
        Ok(seen
            .into_iter()
            .map(|m| Peeked {
                moved_by_queue: m.moved_from.is_some(),
                source_queue: m.moved_from.clone().or_else(|| {
                    m.attributes
                        .iter()
                        .find(|(name, _)| name == super::SOURCE_ATTRIBUTE)
                        .map(|(_, value)| value.clone())
                }),
                id: m.id,
                body: m.body,
                attributes: m.attributes,
                receive_count: m.receive_count,
                sent_at_ms: m.sent_at_ms,
            })
            .collect())
    }

    /// Moves the dead letters with these ids back to the queue each came
    /// from, or deletes them (see [`QueueAdmin::settle_letters`]).
    pub async fn settle_letters(
        &self,
        dlq: &str,
        ids: &[String],
        action: super::LetterAction,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, QueueError> {
        let dlq = self.queue(dlq).await?;
        let mut wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let cancel = CancellationToken::new();
        let mut others = Vec::new();
        let mut scanned = 0;
        let mut settled = 0;
        let outcome = async {
            while !wanted.is_empty() && scanned < super::SCAN_CAP {
                let batch = dlq
                    .receive(
                        MAX_BATCH,
                        Duration::from_secs(1),
                        Duration::from_secs(60),
                        &cancel,
                    )
                    .await?;
                if batch.is_empty() {
                    break;
                }
                scanned += batch.len();
                let (chosen, rest): (Vec<Received>, Vec<Received>) = batch
                    .into_iter()
                    .partition(|m| wanted.remove(m.id.as_str()));
                others.extend(rest.into_iter().map(|m| (m.receipt, Duration::ZERO)));
                if chosen.is_empty() {
                    continue;
                }
                // Each letter is deleted only once it was sent back, and
                // every one sent is deleted, even when a later one fails:
                // nothing is lost and nothing goes back twice.
                let mut sent = Vec::new();
                let mut failure = None;
                for m in &chosen {
                    if failure.is_some() {
                        others.push((m.receipt.clone(), Duration::ZERO));
                        continue;
                    }
                    if action == super::LetterAction::Redrive
                        && let Err(err) = self.send_back(m).await
                    {
                        failure = Some(err);
                        others.push((m.receipt.clone(), Duration::ZERO));
                        continue;
                    }
                    sent.push(m.receipt.clone());
                }
                if !sent.is_empty() {
                    let failed = dlq.delete_batch(&sent).await?;
                    let done = (sent.len() - failed.len()) as u64;
                    settled += done;
                    progress.fetch_add(done, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(err) = failure {
                    return Err(err);
                }
            }
            Ok::<_, QueueError>(())
        }
        .await;
        // Whatever happened, letters looked at and not acted on go back at
        // once, every chunk tried.
        let mut released = Ok(());
        for chunk in others.chunks(MAX_BATCH) {
            if let Err(err) = dlq.change_visibility_batch(chunk).await {
                released = Err(err);
            }
        }
        outcome?;
        released?;
        Ok(settled)
    }

    /// Sends a dead letter back to the queue it came from: the one its
    /// queue's redrive policy moved it from, or the one wasq named.
    async fn send_back(&self, m: &Received) -> Result<(), QueueError> {
        let source = m
            .moved_from
            .as_deref()
            .map(|arn| arn.rsplit(':').next().unwrap_or(arn).to_string())
            .or_else(|| {
                m.attributes
                    .iter()
                    .find(|(name, _)| name == super::SOURCE_ATTRIBUTE)
                    .map(|(_, value)| value.clone())
            })
            .ok_or_else(|| {
                QueueError::Invalid(format!(
                    "dead letter `{}` names no source queue to return to",
                    m.id
                ))
            })?;
        let to = self.queue(&source).await?;
        to.send(redriven(m, to.fifo)).await?;
        Ok(())
    }

    /// Moves the messages of dead-letter queue `dlq` back to `to`. Uses
    /// SQS's own message move task where the endpoint has one (returning
    /// `None`: the task runs on in the service), otherwise moves them here,
    /// each sent before it is deleted, and returns how many moved.
    ///
    /// Moving them here, a letter that repeats one already moved (the same
    /// `wasq-message-id`, body and group: a host that crashed between
    /// sending a dead letter and deleting its message sent it twice) is
    /// deleted, not moved again: what is deleted is the same job as what
    /// moved. Only letters that were in the queue a minute before the move
    /// began count as repeats (SQS's clock, not this one, stamps them), so that a message redriven, failing and
    /// dead-lettered again while the move runs is never taken for one.
    pub async fn redrive(&self, dlq: &str, to: &str) -> Result<Option<u64>, QueueError> {
        self.redrive_settled(dlq, to, Duration::from_secs(60)).await
    }

    /// [`SqsQueues::redrive`], where letters sent at least `settled` before
    /// the move began count as repeats.
    pub async fn redrive_settled(
        &self,
        dlq: &str,
        to: &str,
        settled: Duration,
    ) -> Result<Option<u64>, QueueError> {
        let dlq = self.queue(dlq).await?;
        let to = self.queue(to).await?;
        let arn = |attributes: &mut HashMap<QueueAttributeName, String>, name: &str| {
            attributes
                .remove(&QueueAttributeName::QueueArn)
                .ok_or_else(|| QueueError::Invalid(format!("queue `{name}` has no ARN")))
        };
        let source_arn = arn(&mut self.attributes(&dlq.url).await?, &dlq.name)?;
        let target_arn = arn(&mut self.attributes(&to.url).await?, &to.name)?;
        let started = self
            .client
            .start_message_move_task()
            .source_arn(&source_arn)
            .destination_arn(&target_arn)
            .send()
            .await;
        match started {
            Ok(_) => return Ok(None),
            Err(err) => {
                let failure = error(&dlq.name, &err);
                if matches!(failure, QueueError::Denied(_)) {
                    return Err(failure);
                }
                // The endpoint has no move tasks (or none for this pair).
                tracing::info!(error = %failure, "no message move task; moving the messages here");
            }
        }
        let cancel = CancellationToken::new();
        let mut moved = 0;
        let settled_before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(settled)
            .as_millis() as u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut batch = dlq
                .receive(
                    MAX_BATCH,
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                    &cancel,
                )
                .await?;
            if batch.is_empty() {
                return Ok(Some(moved));
            }
            let (repeats, firsts): (Vec<Received>, Vec<Received>) =
                batch.into_iter().partition(|m| {
                    // A repeat is the same letter again: the same message
                    // id, body and group, written by wasq (not moved by the
                    // queue's own policy, whose attributes are a sender's),
                    // and stamped by SQS before the move began.
                    let Some((_, id)) = m
                        .attributes
                        .iter()
                        .find(|(name, _)| name == super::MESSAGE_ID_ATTRIBUTE)
                    else {
                        return false;
                    };
                    if m.moved_from.is_some() || m.sent_at_ms == 0 || m.sent_at_ms >= settled_before
                    {
                        return false;
                    }
                    let letter = (
                        id.clone(),
                        sha2::Sha256::digest(m.body.as_bytes()),
                        m.group_id.clone(),
                    );
                    !seen.insert(letter)
                });
            if !repeats.is_empty() {
                tracing::info!(
                    count = repeats.len(),
                    "deleting dead letters that repeat one already moved"
                );
                let receipts: Vec<_> = repeats.iter().map(|m| m.receipt.clone()).collect();
                dlq.delete_batch(&receipts).await?;
            }
            batch = firsts;
            if batch.is_empty() {
                continue;
            }
            let letters = batch.iter().map(|m| redriven(m, to.fifo)).collect();
            to.send_batch(letters).await?;
            let receipts: Vec<_> = batch.iter().map(|m| m.receipt.clone()).collect();
            let failed = dlq.delete_batch(&receipts).await?;
            moved += (batch.len() - failed.len()) as u64;
        }
    }
}

/// A dead letter sent back to a queue: its body and attributes, and on a
/// FIFO queue its group and deduplication id (its own id when it had none).
fn redriven(m: &Received, fifo: bool) -> Outgoing {
    Outgoing {
        body: m.body.clone(),
        attributes: m.attributes.clone(),
        delay: Duration::ZERO,
        group_id: fifo.then(|| m.group_id.clone().unwrap_or_else(|| m.id.clone())),
        dedup_id: fifo.then(|| m.dedup_id.clone().unwrap_or_else(|| m.id.clone())),
    }
}

#[async_trait]
impl QueueAdmin for SqsQueues {
    async fn open(&self, name: &str) -> Result<std::sync::Arc<dyn Queue>, QueueError> {
        Ok(std::sync::Arc::new(self.queue(name).await?))
    }

    async fn create(&self, name: &str, options: QueueOptions) -> Result<String, QueueError> {
        if name.contains("://") {
            return Err(QueueError::Invalid(format!(
                "give a new SQS queue by name, not as the URL `{name}`"
            )));
        }
        SqsQueues::create(self, name, options).await
    }

    async fn set(&self, name: &str, changes: QueueChanges) -> Result<QueueStats, QueueError> {
        SqsQueues::set(self, name, changes).await
    }

    async fn list(&self) -> Result<Vec<String>, QueueError> {
        SqsQueues::list(self).await
    }

    async fn purge(&self, name: &str) -> Result<u64, QueueError> {
        SqsQueues::purge(self, name).await
    }

    async fn peek(&self, name: &str, max: usize) -> Result<Vec<Peeked>, QueueError> {
        SqsQueues::peek(self, name, max).await
    }

    async fn dead_letter_queue(&self, name: &str) -> Result<Option<String>, QueueError> {
        let url = self.url_of(name).await?;
        Ok(self
            .redrive_policy(&url)
            .await?
            .map(|policy| policy.dlq_url))
    }

    async fn settle_letters(
        &self,
        dlq: &str,
        ids: &[String],
        action: super::LetterAction,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, QueueError> {
        SqsQueues::settle_letters(self, dlq, ids, action, progress).await
    }

    async fn redrive(&self, dlq: &str, to: &str) -> Result<Option<u64>, QueueError> {
        SqsQueues::redrive(self, dlq, to).await
    }
}

/// One SQS queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
    name: String,
    fifo: bool,
    /// The queue's own `MaximumMessageSize`, body and attributes together.
    max_message_size: usize,
    /// Polls left to finish after their receive was cancelled.
    releases: tokio_util::task::TaskTracker,
    /// Receives given back unstarted, by message id: SQS counts them, and
    /// they are no attempts.
    given_back: std::sync::Arc<std::sync::Mutex<GivenBack>>,
}

/// The most given-back messages one queue handle remembers; past it the
/// oldest are forgotten (such a message may then be dead-lettered an
/// attempt early, as without the memory).
const GIVEN_BACK_REMEMBERED: usize = 100_000;

/// Message ids and how many of their receives were given back, oldest
/// first.
#[derive(Debug, Default)]
struct GivenBack {
    counts: std::collections::HashMap<String, u32>,
    order: std::collections::VecDeque<String>,
}

impl GivenBack {
    fn add(&mut self, id: &str) {
        match self.counts.get_mut(id) {
            Some(count) => *count += 1,
            None => {
                if self.order.len() >= GIVEN_BACK_REMEMBERED
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.counts.remove(&oldest);
                }
                self.counts.insert(id.to_string(), 1);
                self.order.push_back(id.to_string());
            }
        }
    }

    fn of(&self, id: &str) -> u32 {
        self.counts.get(id).copied().unwrap_or(0)
    }
}

impl SqsQueue {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes the messages of a poll nobody waits for any more visible
    /// again. If this fails too, they come back when their visibility
    /// timeout ends.
    async fn release(&self, out: &ReceiveMessageOutput) {
        let entries: Vec<(String, Duration)> = out
            .messages()
            .iter()
            .filter_map(|m| Some((m.receipt_handle()?.to_string(), Duration::ZERO)))
            .collect();
        if entries.is_empty() {
            return;
        }
        {
            let mut given_back = self.given_back.lock().unwrap_or_else(|p| p.into_inner());
            for id in out.messages().iter().filter_map(|m| m.message_id()) {
                given_back.add(id);
            }
        }
        match self.change_visibility_batch(&entries).await {
            Ok(failures) if failures.is_empty() => {
                tracing::debug!(queue = %self.name, count = entries.len(), "released what a cancelled receive took")
            }
            Ok(_) | Err(_) => tracing::warn!(
                queue = %self.name,
                count = entries.len(),
                "could not release what a cancelled receive took; it comes back when its visibility timeout ends"
            ),
        }
    }

    fn received(&self, message: &Message) -> Received {
        let system = message.attributes();
        let system = |name: MessageSystemAttributeName| {
            system
                .and_then(|attrs| attrs.get(&name))
                .map(String::as_str)
        };
        let mut attributes: Vec<(String, String)> = message
            .message_attributes()
            .map(|attrs| {
                attrs
                    .iter()
                    .filter_map(|(name, value)| Some((name.clone(), attribute_text(value)?)))
                    .collect()
            })
            .unwrap_or_default();
        attributes.sort();
        let id = message.message_id().unwrap_or_default();
        Received {
            given_back: self
                .given_back
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .of(id),
            id: id.to_string(),
            receipt: message.receipt_handle().unwrap_or_default().to_string(),
            body: message.body().unwrap_or_default().to_string(),
            attributes,
            receive_count: system(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            sent_at_ms: system(MessageSystemAttributeName::SentTimestamp)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            group_id: system(MessageSystemAttributeName::MessageGroupId).map(str::to_string),
            dedup_id: system(MessageSystemAttributeName::MessageDeduplicationId)
                .map(str::to_string),
            moved_from: system(MessageSystemAttributeName::DeadLetterQueueSourceArn)
                .map(str::to_string),
        }
    }

    fn entry(
        &self,
        index: usize,
        message: &Outgoing,
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        check_outgoing(&self.name, self.fifo, self.max_message_size, message)?;
        SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(&message.body)
            .set_delay_seconds((!self.fifo).then_some(message.delay.as_secs() as i32))
            .set_message_group_id(message.group_id.clone())
            .set_message_deduplication_id(self.dedup_id(message))
            .set_message_attributes(attributes_of(&message.attributes))
            .build()
            .map_err(|err| QueueError::Invalid(format!("queue `{}`: {err}", self.name)))
    }

    /// FIFO messages without a deduplication id get a hash of the body, as
    /// content-based deduplication would, so the queue need not enable it.
    fn dedup_id(&self, message: &Outgoing) -> Option<String> {
        if !self.fifo {
            return None;
        }
        Some(
            message
                .dedup_id
                .clone()
                .unwrap_or_else(|| hex::encode(sha2::Sha256::digest(message.body.as_bytes()))),
        )
    }
}

/// Text and number attributes as they are; binary ones as base64.
fn attribute_text(value: &MessageAttributeValue) -> Option<String> {
    use base64::Engine as _;
    match value.data_type() {
        t if t.starts_with("Binary") => value
            .binary_value()
            .map(|blob| base64::engine::general_purpose::STANDARD.encode(blob.as_ref())),
        _ => value.string_value().map(str::to_string),
    }
}

fn attributes_of(
    attributes: &[(String, String)],
) -> Option<HashMap<String, MessageAttributeValue>> {
    if attributes.is_empty() {
        return None;
    }
    Some(
        attributes
            .iter()
            .map(|(name, value)| {
                // The extended client's size is a Number, as its libraries
                // write it; every other attribute is a String.
                let number = (name == crate::payload::SIZE_ATTRIBUTE
                    || name == crate::payload::LEGACY_SIZE_ATTRIBUTE)
                    && value.parse::<u64>().is_ok();
                let value = MessageAttributeValue::builder()
                    .data_type(if number { "Number" } else { "String" })
                    .string_value(value)
                    .build()
                    .expect("data type is set");
                (name.clone(), value)
            })
            .collect(),
    )
}

/// Batch calls under way at once for one `per_ten`.
const CALLS_AT_ONCE: usize = 8;

/// Runs a batch call on each ten entries (an entry's batch id is its
/// index among its ten), several at once, and gathers the entries SQS
/// failed, by receipt. A call that fails as a whole fails its ten entries
/// and the others go on (a batch's 10,000 leases are renewed in 1,000
/// calls); only when every call failed is the error returned, so that a
/// caller riding out an outage tries again.
async fn per_ten<T: Clone, Fut>(
    entries: &[T],
    receipt: impl Fn(&T) -> &String,
    call: impl Fn(Vec<T>) -> Fut,
) -> Result<Vec<BatchFailure>, QueueError>
where
    Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, QueueError>>,
{
    use futures_util::StreamExt as _;
    let chunks: Vec<&[T]> = entries.chunks(MAX_BATCH).collect();
    let calls: Vec<Fut> = chunks.iter().map(|chunk| call(chunk.to_vec())).collect();
    // In order: each answer goes with its chunk.
    let results: Vec<Result<Vec<BatchResultErrorEntry>, QueueError>> =
        futures_util::stream::iter(calls)
            .buffered(CALLS_AT_ONCE)
            .collect()
            .await;
    let mut failures = Vec::new();
    let mut first_error = None;
    let mut answered = 0;
    for (chunk, result) in chunks.into_iter().zip(results) {
        match result {
            Ok(failed) => {
                answered += 1;
                failures.extend(batch_failures(&failed, |i| {
                    chunk.get(i).map(|entry| receipt(entry).clone())
                }));
            }
            Err(err) => {
                failures.extend(chunk.iter().map(|entry| BatchFailure {
                    receipt: receipt(entry).clone(),
                    reason: err.to_string(),
                }));
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) if answered == 0 => Err(err),
        _ => Ok(failures),
    }
}

fn batch_failures(
    failed: &[BatchResultErrorEntry],
    receipt_at: impl Fn(usize) -> Option<String>,
) -> Vec<BatchFailure> {
    failed
        .iter()
        .map(|f| BatchFailure {
            receipt: f
                .id()
                .parse()
                .ok()
                .and_then(&receipt_at)
                .unwrap_or_default(),
            reason: format!("{}: {}", f.code(), f.message().unwrap_or_default()),
        })
        .collect()
}

/// Whole seconds, as SQS takes them, rounded down (for waits).
fn secs(duration: Duration) -> i32 {
    duration.as_secs().min(i32::MAX as u64) as i32
}

/// Whole seconds rounded up, so a message stays hidden at least as long as
/// asked (a 200 ms backoff becomes 1 s, not 0).
fn secs_up(duration: Duration) -> i32 {
    let up = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    up.min(i32::MAX as u64) as i32
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, QueueError> {
        let request = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(secs(wait.min(super::MAX_WAIT)))
            .visibility_timeout(secs_up(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send();
        if cancel.is_cancelled() {
            return Ok(Vec::new());
        }
        let mut poll = Box::pin(request);
        let out = tokio::select! {
            out = &mut poll => out.map_err(|err| error(&self.name, &err))?,
            _ = cancel.cancelled() => {
                // The caller stops waiting; the poll finishes on its own
                // and releases what it took (see the module's notes).
                let queue = self.clone();
                self.releases.spawn(async move {
                    if let Ok(out) = poll.await {
                        queue.release(&out).await;
                    }
                });
                return Ok(Vec::new());
            }
        };
        Ok(out.messages().iter().map(|m| self.received(m)).collect())
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchFailure>, QueueError> {
        per_ten(
            receipts,
            |receipt| receipt,
            |chunk| async move {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, receipt)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(receipt)
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect();
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|err| error(&self.name, &err))?;
                Ok(out.failed().to_vec())
            },
        )
        .await
    }

    /// Visible at once. SQS has counted the receive and cannot take it
    /// back: the queue remembers it, to report with the message.
    async fn give_back(&self, messages: &[Received]) -> Result<Vec<BatchFailure>, QueueError> {
        let entries: Vec<(String, Duration)> = messages
            .iter()
            .map(|m| (m.receipt.clone(), Duration::ZERO))
            .collect();
        let failures = self.change_visibility_batch(&entries).await?;
        // Remembered once it went back (a call tried again after an outage
        // must not count it twice).
        let mut given_back = self.given_back.lock().unwrap_or_else(|p| p.into_inner());
        for message in messages {
            if !failures.iter().any(|f| f.receipt == message.receipt) {
                given_back.add(&message.id);
            }
        }
        Ok(failures)
    }

    fn counts_given_back(&self) -> bool {
        true
    }

    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<BatchFailure>, QueueError> {
        per_ten(
            entries,
            |(receipt, _)| receipt,
            |chunk| async move {
                let batch = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (receipt, visibility))| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(receipt)
                            .visibility_timeout(secs_up((*visibility).min(super::MAX_VISIBILITY)))
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect();
                let out = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(batch))
                    .send()
                    .await
                    .map_err(|err| error(&self.name, &err))?;
                Ok(out.failed().to_vec())
            },
        )
        .await
    }

    async fn send(&self, message: Outgoing) -> Result<String, QueueError> {
        check_outgoing(&self.name, self.fifo, self.max_message_size, &message)?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body)
            .set_delay_seconds((!self.fifo).then_some(message.delay.as_secs() as i32))
            .set_message_group_id(message.group_id.clone())
            .set_message_deduplication_id(self.dedup_id(&message))
            .set_message_attributes(attributes_of(&message.attributes))
            .send()
            .await
            .map_err(|err| error(&self.name, &err))?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }

    /// SQS may fail single entries of a batch; those are sent once more on
    /// their own, and an error names any that still fail (the others stay
    /// sent).
    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, QueueError> {
        if messages.len() > MAX_BATCH {
            return Err(QueueError::Invalid(format!(
                "queue `{}`: at most {MAX_BATCH} messages per batch",
                self.name
            )));
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| self.entry(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| error(&self.name, &err))?;
        let mut ids = vec![String::new(); messages.len()];
        for ok in out.successful() {
            if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|i| ids.get_mut(i)) {
                *slot = ok.message_id().to_string();
            }
        }
        for failed in out.failed() {
            let Some(i) = failed.id().parse::<usize>().ok().filter(|i| *i < ids.len()) else {
                continue;
            };
            ids[i] = self.send(messages[i].clone()).await?;
        }
        Ok(ids)
    }

    /// One GetQueueAttributes call: the counts, and the redrive policy's
    /// target by name.
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let queues = SqsQueues {
            client: self.client.clone(),
        };
        let attributes = queues.attributes(&self.url).await?;
        let number = |name: QueueAttributeName| -> u64 {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let redrive = redrive_in(&self.name, &attributes)?.map(|target| Redrive {
            dlq: target.name,
            max_receive_count: target.max_receive_count,
        });
        Ok(QueueStats {
            name: self.name.clone(),
            fifo: self.fifo,
            visibility_timeout: Duration::from_secs(number(QueueAttributeName::VisibilityTimeout)),
            redrive,
            visible: number(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: number(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: number(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    async fn close(&self) {
        self.releases.close();
        let longest = super::MAX_WAIT + Duration::from_secs(5);
        if tokio::time::timeout(longest, self.releases.wait())
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.name, "a cancelled receive's poll did not finish; what it took comes back when its visibility timeout ends");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 leases are 1,000 calls: one that fails whole fails its ten
    /// entries and the rest go on; only when all fail is it an error.
    #[tokio::test]
    async fn a_failed_call_fails_its_ten_and_the_others_go_on() {
        let receipts: Vec<String> = (0..35).map(|i| format!("r{i}")).collect();
        let failures = per_ten(
            &receipts,
            |r| r,
            |chunk: Vec<String>| async move {
                if chunk[0] == "r10" {
                    Err(QueueError::Unavailable("down".into()))
                } else if chunk[0] == "r20" {
                    Ok(vec![
                        BatchResultErrorEntry::builder()
                            .id("3")
                            .code("ReceiptHandleIsInvalid")
                            .sender_fault(true)
                            .build()
                            .unwrap(),
                    ])
                } else {
                    Ok(Vec::new())
                }
            },
        )
        .await
        .unwrap();
        let failed: Vec<&str> = failures.iter().map(|f| f.receipt.as_str()).collect();
        let mut want: Vec<String> = (10..20).map(|i| format!("r{i}")).collect();
        want.push("r23".into());
        assert_eq!(failed, want);
        let all_down = per_ten(
            &receipts,
            |r| r,
            |_chunk: Vec<String>| async {
                Err::<Vec<BatchResultErrorEntry>, _>(QueueError::Unavailable("down".into()))
            },
        )
        .await;
        assert!(matches!(all_down, Err(QueueError::Unavailable(_))));
    }

    #[test]
    fn names_and_arns_are_read_off_urls() {
        assert_eq!(
            name_of("https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"),
            "jobs"
        );
        assert_eq!(
            name_of("http://127.0.0.1:5000/123456789012/jobs.fifo"),
            "jobs.fifo"
        );
        assert_eq!(name_of("jobs"), "jobs");
        assert_eq!(
            parse_arn("arn:aws:sqs:us-east-1:123456789012:jobs-dlq"),
            Some(("123456789012", "jobs-dlq"))
        );
        assert_eq!(parse_arn("arn:aws:s3:::bucket"), None);
    }

    #[test]
    fn visibility_rounds_up_to_whole_seconds() {
        assert_eq!(secs_up(Duration::from_millis(200)), 1);
        assert_eq!(secs_up(Duration::from_secs(30)), 30);
        assert_eq!(secs_up(Duration::ZERO), 0);
        assert_eq!(secs(Duration::from_millis(200)), 0);
    }

    #[test]
    fn redrive_policies_take_counts_as_numbers_or_text() {
        for text in [
            r#"{"deadLetterTargetArn":"arn:aws:sqs:r:1:d","maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:r:1:d","maxReceiveCount":"3"}"#,
        ] {
            let policy: RedrivePolicy = serde_json::from_str(text).unwrap();
            assert_eq!(policy.max_receive_count, 3);
        }
    }
}
