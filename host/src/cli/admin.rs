//! Producer and admin commands: `send`, `queue …`, `dlq …`.

use super::GlobalArgs;
use crate::backends::{Backends, QueueRef};
use crate::queue::QueueOptions;
use crate::queue::{Outgoing, Redrive};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The queue: `local://NAME`, `sqs://NAME` or an SQS queue URL.
    pub queue: String,
    /// The message body.
    #[arg(long, conflicts_with_all = ["file", "lines"], required_unless_present_any = ["file", "lines"])]
    pub body: Option<String>,
    /// Read the message body from a file (`-` for stdin).
    #[arg(long, conflicts_with = "lines")]
    pub file: Option<PathBuf>,
    /// Send many messages: one body per line of FILE (`-` for stdin; empty
    /// lines are skipped), in batches of ten. Prints each message's id.
    #[arg(long, value_name = "FILE")]
    pub lines: Option<PathBuf>,
    /// Print JSON: `{"id"}`, or `{"sent", "ids"}` with --lines.
    #[arg(long)]
    pub json: bool,
    /// The message group (FIFO queues).
    #[arg(long)]
    pub group_id: Option<String>,
    /// The deduplication id (FIFO queues; default: a hash of the body).
    #[arg(long)]
    pub dedup_id: Option<String>,
    /// Deliver no sooner than this, e.g. 30s (standard queues, at most 15m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// A message attribute, NAME=VALUE.
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attributes: Vec<String>,
    /// Store a body too large for the queue in this bucket and send a
    /// pointer to it, as the SQS Extended Client does (its consumers, and
    /// a wasq binding with this payload-bucket, read the body back).
    #[arg(long, conflicts_with = "lines")]
    pub payload_bucket: Option<String>,
    /// With --payload-bucket: store the body there whatever its size.
    #[arg(long, requires = "payload_bucket")]
    pub payload_always: bool,
    /// Where --payload-bucket lives: `s3`, or `local` (DATA_DIR/blobs).
    /// Default: S3 for an SQS queue, local for an embedded one.
    #[arg(long, requires = "payload_bucket")]
    pub blob_store: Option<crate::backends::BlobBackend>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (a name ending .fifo makes a FIFO queue), with a
    /// dead-letter queue NAME-dlq unless told otherwise.
    Create {
        queue: String,
        /// How long a received message stays hidden; a binding uses the
        /// queue's unless it names its own, and it must exceed the
        /// processor's timeout.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3m")]
        visibility_timeout: Duration,
        /// The dead-letter queue.
        #[arg(long, conflicts_with = "no_dlq")]
        dlq: Option<String>,
        /// Create it without a dead-letter queue.
        #[arg(long)]
        no_dlq: bool,
        /// Receives after which the queue moves a message to its DLQ.
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
    },
    /// List queues: the local ones, or with --sqs those of the account.
    List {
        #[arg(long)]
        sqs: bool,
        /// Print a JSON list of addresses.
        #[arg(long)]
        json: bool,
    },
    /// Counts and settings of a queue.
    Stats {
        queue: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete every message in a queue.
    Purge { queue: String },
    /// Change a queue's visibility timeout or the receive count of its
    /// redrive policy (every host bound to it follows once restarted).
    Set {
        queue: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        visibility_timeout: Option<Duration>,
        /// Receives after which the queue moves a message to its DLQ.
        #[arg(long)]
        max_receive_count: Option<u32>,
        /// The dead-letter queue of its redrive policy (created if need
        /// be).
        #[arg(long)]
        dlq: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters of a queue, with their reasons.
    List {
        /// The source queue (its dead-letter queue is listed).
        queue: String,
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Print a JSON object: `{"dlq", "total", "letters": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Move a queue's dead letters back to it.
    Redrive { queue: String },
}

fn backends(global: &GlobalArgs) -> Backends {
    Backends::new(
        global.env(None),
        global.aws(),
        Default::default(),
        Default::default(),
    )
}

fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

pub async fn send(args: SendArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let queue_ref = QueueRef::parse(&args.queue)?;
    let attributes = args
        .attributes
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => Ok((name.to_string(), value.to_string())),
            None => bail!("--attr `{pair}` is not NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let queue = backends(global).queue(&queue_ref).await?;
    let outgoing = |body: String| Outgoing {
        body,
        attributes: attributes.clone(),
        delay: args.delay.unwrap_or_default(),
        group_id: args.group_id.clone(),
        dedup_id: args.dedup_id.clone(),
    };
    if let Some(path) = &args.lines {
        let text = read_input(path)?;
        let bodies: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let progress = indicatif::ProgressBar::new(bodies.len() as u64)
            .with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} sent, {per_sec}")
                    .expect("the template is valid"),
            )
            .with_finish(indicatif::ProgressFinish::AndLeave);
        // Hidden unless stderr is a terminal.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut ids = Vec::with_capacity(bodies.len());
        for (n, batch) in bodies.chunks(crate::queue::MAX_BATCH).enumerate() {
            let sent = queue
                .send_batch(batch.iter().map(|b| outgoing(b.to_string())).collect())
                .await
                .with_context(|| {
                    format!(
                        "sending lines {}-{} to {queue_ref} ({} sent before them)",
                        n * crate::queue::MAX_BATCH + 1,
                        n * crate::queue::MAX_BATCH + batch.len(),
                        ids.len()
                    )
                })?;
            progress.inc(sent.len() as u64);
            if !args.json {
                for id in &sent {
                    println!("{id}");
                }
            }
            ids.extend(sent);
        }
        progress.finish();
        if args.json {
            println!("{}", serde_json::json!({ "sent": ids.len(), "ids": ids }));
        }
        return Ok(true);
    }
    let body = match (&args.body, &args.file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) => read_input(path)?,
        (None, None) => bail!("give --body, --file or --lines"),
    };
    let mut message = outgoing(body);
    if let Some(bucket) = &args.payload_bucket
        && (args.payload_always || crate::queue::message_size(&message) > queue.max_message_size())
    {
        let store = args.blob_store.unwrap_or(if queue_ref.is_local() {
            crate::backends::BlobBackend::Local
        } else {
            crate::backends::BlobBackend::S3
        });
        let mut backends = backends(global);
        backends.blobs = store;
        let (_, services) = backends.services().await?;
        message = crate::payload::offload(services.blobs.as_ref(), bucket, message).await?;
    }
    let id = queue.send(message).await?;
    if args.json {
        println!("{}", serde_json::json!({ "id": id }));
    } else {
        println!("{id}");
    }
    Ok(true)
}

pub async fn queue(command: QueueCommand, global: &GlobalArgs) -> anyhow::Result<bool> {
    let backends = backends(global);
    match command {
        QueueCommand::Create {
            queue,
            visibility_timeout,
            dlq,
            no_dlq,
            max_receive_count,
        } => {
            let queue = QueueRef::parse(&queue)?;
            let dlq = match (no_dlq, dlq) {
                (true, _) => None,
                (false, Some(dlq)) => Some(QueueRef::parse(&dlq)?),
                (false, None) => Some(queue.default_dlq()),
            };
            if let Some(dlq) = &dlq
                && dlq.is_local() != queue.is_local()
            {
                bail!(
                    "a queue and its dead-letter queue live in the same backend: {queue} and {dlq} do not"
                );
            }
            let options = QueueOptions {
                visibility_timeout,
                redrive: dlq.as_ref().map(|dlq| Redrive {
                    dlq: dlq.name().to_string(),
                    max_receive_count,
                }),
            };
            let address = backends
                .admin(&queue)
                .await?
                .create(queue.address(), options)
                .await?;
            if address != queue.to_string() {
                // An SQS queue's URL, for tools that want it.
                println!("{address}");
            }
            match dlq {
                Some(dlq) => {
                    println!("{queue} (dead letters to {dlq} after {max_receive_count} receives)")
                }
                None => println!("{queue} (no dead-letter queue)"),
            }
        }
        QueueCommand::List { sqs, json } => {
            let backend = if sqs {
                QueueRef::Sqs(String::new())
            } else {
                QueueRef::Local(String::new())
            };
            let addresses = backends.admin(&backend).await?.list().await?;
            if json {
                println!("{}", serde_json::json!(addresses));
            } else {
                for address in addresses {
                    println!("{address}");
                }
            }
        }
        QueueCommand::Stats { queue, json } => {
            let queue = QueueRef::parse(&queue)?;
            let stats = backends.queue(&queue).await?.stats().await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "queue": queue.to_string(),
                        "fifo": stats.fifo,
                        "visible": stats.visible,
                        "in_flight": stats.in_flight,
                        "delayed": stats.delayed,
                        "visibility_timeout_secs": stats.visibility_timeout.as_secs(),
                        "dlq": stats.redrive.as_ref().map(|r| r.dlq.clone()),
                        "max_receive_count": stats.redrive.as_ref().map(|r| r.max_receive_count),
                    })
                );
                return Ok(true);
            }
            println!("queue:              {queue}");
            println!(
                "kind:               {}",
                if stats.fifo { "FIFO" } else { "standard" }
            );
            println!("visible:            {}", stats.visible);
            println!("in flight:          {}", stats.in_flight);
            println!("delayed:            {}", stats.delayed);
            print_settings(&stats);
        }
        QueueCommand::Set {
            queue,
            visibility_timeout,
            max_receive_count,
            dlq,
        } => {
            let queue = QueueRef::parse(&queue)?;
            if visibility_timeout.is_none() && max_receive_count.is_none() && dlq.is_none() {
                bail!("give --visibility-timeout, --max-receive-count or --dlq");
            }
            let dlq = match dlq {
                Some(dlq) => {
                    let dlq = QueueRef::parse(&dlq)?;
                    if dlq.is_local() != queue.is_local() {
                        bail!(
                            "a queue and its dead-letter queue live in the same backend: {queue} and {dlq} do not"
                        );
                    }
                    Some(dlq.address().to_string())
                }
                None => None,
            };
            backends.queue(&queue).await?;
            let stats = backends
                .admin(&queue)
                .await?
                .set(
                    queue.address(),
                    crate::queue::QueueChanges {
                        visibility_timeout,
                        max_receive_count,
                        dlq,
                    },
                )
                .await?;
            println!("queue:              {queue}");
            print_settings(&stats);
        }
        QueueCommand::Purge { queue } => {
            let queue = QueueRef::parse(&queue)?;
            backends.queue(&queue).await?;
            let purged = backends.admin(&queue).await?.purge(queue.address()).await?;
            println!("purged {purged} messages from {queue}");
        }
    }
    Ok(true)
}

fn print_settings(stats: &crate::queue::QueueStats) {
    println!(
        "visibility timeout: {}",
        humantime::format_duration(stats.visibility_timeout)
    );
    match &stats.redrive {
        Some(r) => println!(
            "dead letters:       {} after {} receives",
            r.dlq, r.max_receive_count
        ),
        None => println!("dead letters:       none"),
    }
}

/// The dead-letter queue of `queue`: its redrive target, else (local
/// queues) NAME-dlq.
async fn dlq_of(backends: &Backends, queue: &QueueRef) -> anyhow::Result<QueueRef> {
    backends.queue(queue).await?;
    match backends
        .admin(queue)
        .await?
        .dead_letter_queue(queue.address())
        .await?
    {
        Some(dlq) => Ok(queue.sibling(dlq)),
        None if queue.is_local() => Ok(queue.default_dlq()),
        None => bail!("queue {queue} has no redrive policy, so no dead-letter queue"),
    }
}

/// One dead letter as `dlq list --json` shows it: what wasq wrote (the
/// reason, plugin, origin; null for a letter the queue's own redrive
/// moved) apart from what its sender set.
fn dead_letter_json(letter: &crate::queue::Peeked) -> serde_json::Value {
    let by_wasq = |name: &str| {
        (!letter.moved_by_queue)
            .then(|| letter.attributes.iter().find(|(n, _)| n == name))
            .flatten()
            .map(|(_, v)| v.clone())
    };
    let sender: serde_json::Map<String, serde_json::Value> = letter
        .attributes
        .iter()
        .filter(|(name, _)| letter.moved_by_queue || !name.starts_with("wasq-"))
        .map(|(name, value)| (name.clone(), value.clone().into()))
        .collect();
    serde_json::json!({
        "id": letter.id,
        "receive_count": letter.receive_count,
        "sent_at_ms": letter.sent_at_ms,
        "moved_by_queue": letter.moved_by_queue,
        "source_queue": letter.source_queue,
        "reason": by_wasq(crate::dispatch::REASON_ATTRIBUTE),
        "plugin": by_wasq(crate::dispatch::PLUGIN_ATTRIBUTE),
        "message_id": by_wasq(crate::dispatch::MESSAGE_ID_ATTRIBUTE)
            .map(|sealed| crate::dispatch::seal::shown(&sealed).to_string()),
        "sender_attributes": sender,
        "body": letter.body,
    })
}

/// One dead letter, every attacker-chosen byte escaped. The reason, plugin
/// and origin are shown only when wasq wrote them: a letter the queue's own
/// redrive moved carries its sender's attributes, `wasq-*` ones included,
/// and those are listed as the sender's.
fn print_dead_letter(letter: &crate::queue::Peeked) {
    use crate::text::Escaped;
    let by_wasq = |name: &str| {
        (!letter.moved_by_queue)
            .then(|| letter.attributes.iter().find(|(n, _)| n == name))
            .flatten()
            .map(|(_, v)| v.as_str())
    };
    println!(
        "- {}  receives: {}",
        Escaped(&letter.id),
        Escaped(
            &by_wasq(crate::dispatch::RECEIVE_COUNT_ATTRIBUTE)
                .map_or(letter.receive_count.to_string(), str::to_string)
        )
    );
    if letter.moved_by_queue {
        println!(
            "  reason: moved by the queue's redrive policy after too many receives, not by wasq{}",
            letter
                .source_queue
                .as_deref()
                .map(|q| format!(" (from {})", Escaped(q)))
                .unwrap_or_default()
        );
    } else {
        println!(
            "  reason: {}",
            Escaped(by_wasq(crate::dispatch::REASON_ATTRIBUTE).unwrap_or("none recorded"))
        );
        if let Some(plugin) = by_wasq(crate::dispatch::PLUGIN_ATTRIBUTE) {
            println!("  plugin: {}", Escaped(plugin));
        }
        if let Some(original) = by_wasq(crate::dispatch::MESSAGE_ID_ATTRIBUTE) {
            println!(
                "  was:    {} in {}",
                Escaped(crate::dispatch::seal::shown(original)),
                Escaped(by_wasq(crate::queue::SOURCE_ATTRIBUTE).unwrap_or("?"))
            );
        }
    }
    let senders: Vec<String> = letter
        .attributes
        .iter()
        .filter(|(name, _)| letter.moved_by_queue || !name.starts_with("wasq-"))
        .map(|(name, value)| {
            format!(
                "{}={}",
                Escaped(name),
                Escaped(&crate::text::truncate(value, 200))
            )
        })
        .collect();
    if !senders.is_empty() {
        println!("  set by its sender: {}", senders.join(", "));
    }
    println!(
        "  body:   {}",
        Escaped(&crate::text::truncate(&letter.body, 200))
    );
}

pub async fn dlq(command: DlqCommand, global: &GlobalArgs) -> anyhow::Result<bool> {
    let backends = backends(global);
    match command {
        DlqCommand::List { queue, max, json } => {
            let queue = QueueRef::parse(&queue)?;
            let dlq = dlq_of(&backends, &queue).await?;
            let stats = backends.queue(&dlq).await?.stats().await?;
            let total = stats.visible + stats.in_flight + stats.delayed;
            let letters = backends.admin(&dlq).await?.peek(dlq.address(), max).await?;
            if json {
                let letters: Vec<serde_json::Value> =
                    letters.iter().map(dead_letter_json).collect();
                println!(
                    "{}",
                    crate::text::json_line(&serde_json::json!({
                        "dlq": dlq.to_string(),
                        "total": total,
                        "letters": letters,
                    }))
                );
                return Ok(true);
            }
            if (letters.len() as u64) < total {
                println!(
                    "{total} dead letters in {dlq}; showing {} (--max {max})",
                    letters.len()
                );
            } else {
                println!("{} dead letters in {dlq}", letters.len());
            }
            for letter in letters {
                print_dead_letter(&letter);
            }
        }
        DlqCommand::Redrive { queue } => {
            let queue = QueueRef::parse(&queue)?;
            let dlq = dlq_of(&backends, &queue).await?;
            backends.queue(&dlq).await?;
            match backends
                .admin(&queue)
                .await?
                .redrive(dlq.address(), queue.address())
                .await?
            {
                Some(moved) => println!("moved {moved} messages from {dlq} back to {queue}"),
                None => println!(
                    "started a message move task from {dlq} back to {queue}; SQS moves the messages"
                ),
            }
        }
    }
    Ok(true)
}
