//! Producer and admin commands: `send`, `queue …`, `dlq …`.

use super::GlobalArgs;
use crate::queue::local::QueueOptions;
use crate::queue::{LocalQueues, Outgoing, Queue, QueueError, Redrive};
use crate::run::QueueRef;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The queue, `local://NAME`.
    pub queue: String,
    /// The message body.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub body: Option<String>,
    /// Read the message body from a file (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
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
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (a name ending .fifo makes a FIFO queue), with a
    /// dead-letter queue NAME-dlq unless told otherwise.
    Create {
        queue: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
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
    /// List queues.
    List,
    /// Counts and settings of a queue.
    Stats { queue: String },
    /// Delete every message in a queue.
    Purge { queue: String },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters of a queue, with their reasons.
    List {
        /// The source queue (its dead-letter queue is listed).
        queue: String,
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move a queue's dead letters back to it.
    Redrive { queue: String },
}

async fn open(global: &GlobalArgs) -> anyhow::Result<LocalQueues> {
    LocalQueues::open(&global.data_dir)
}

/// A queue that must exist, with a hint when it does not.
async fn existing(
    queues: &LocalQueues,
    queue: &QueueRef,
) -> anyhow::Result<crate::queue::local::LocalQueue> {
    match queues.queue(queue.name()).await {
        Err(QueueError::NoSuchQueue(_)) => bail!(
            "queue {queue} does not exist: create it with `wasq queue create {}` or start `wasq run --queue {queue}`",
            queue.name()
        ),
        other => Ok(other?),
    }
}

pub async fn send(args: SendArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let queue_ref = QueueRef::parse(&args.queue)?;
    let body = match (&args.body, &args.file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("reading the body from stdin")?
        }
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => bail!("give --body or --file"),
    };
    let attributes = args
        .attributes
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => Ok((name.to_string(), value.to_string())),
            None => bail!("--attr `{pair}` is not NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let queues = open(global).await?;
    let queue = existing(&queues, &queue_ref).await?;
    let id = queue
        .send(Outgoing {
            body,
            attributes,
            delay: args.delay.unwrap_or_default(),
            group_id: args.group_id,
            dedup_id: args.dedup_id,
        })
        .await?;
    println!("{id}");
    Ok(true)
}

pub async fn queue(command: QueueCommand, global: &GlobalArgs) -> anyhow::Result<bool> {
    let queues = open(global).await?;
    match command {
        QueueCommand::Create {
            queue,
            visibility_timeout,
            dlq,
            no_dlq,
            max_receive_count,
        } => {
            let queue = QueueRef::parse(&queue)?;
            let redrive = if no_dlq {
                None
            } else {
                let dlq = match dlq {
                    Some(dlq) => QueueRef::parse(&dlq)?,
                    None => queue.default_dlq(),
                };
                Some(Redrive {
                    dlq: dlq.name().to_string(),
                    max_receive_count,
                })
            };
            queues
                .create(
                    queue.name(),
                    QueueOptions {
                        visibility_timeout,
                        redrive: redrive.clone(),
                    },
                )
                .await?;
            match redrive {
                Some(r) => println!(
                    "{queue} (dead letters to local://{} after {} receives)",
                    r.dlq, r.max_receive_count
                ),
                None => println!("{queue} (no dead-letter queue)"),
            }
        }
        QueueCommand::List => {
            for name in queues.list().await? {
                println!("local://{name}");
            }
        }
        QueueCommand::Stats { queue } => {
            let queue = existing(&queues, &QueueRef::parse(&queue)?).await?;
            let stats = queue.stats().await?;
            println!("queue:              local://{}", stats.name);
            println!(
                "kind:               {}",
                if stats.fifo { "FIFO" } else { "standard" }
            );
            println!("visible:            {}", stats.visible);
            println!("in flight:          {}", stats.in_flight);
            println!("delayed:            {}", stats.delayed);
            println!(
                "visibility timeout: {}",
                humantime::format_duration(stats.visibility_timeout)
            );
            match stats.redrive {
                Some(r) => println!(
                    "dead letters:       local://{} after {} receives",
                    r.dlq, r.max_receive_count
                ),
                None => println!("dead letters:       none"),
            }
        }
        QueueCommand::Purge { queue } => {
            let queue = QueueRef::parse(&queue)?;
            existing(&queues, &queue).await?;
            println!(
                "purged {} messages from {queue}",
                queues.purge(queue.name()).await?
            );
        }
    }
    Ok(true)
}

/// The dead-letter queue of `queue`: its redrive target, else NAME-dlq.
async fn dlq_of(queues: &LocalQueues, queue: &QueueRef) -> anyhow::Result<QueueRef> {
    let source = existing(queues, queue).await?;
    Ok(match source.stats().await?.redrive {
        Some(redrive) => QueueRef::Local(redrive.dlq),
        None => queue.default_dlq(),
    })
}

pub async fn dlq(command: DlqCommand, global: &GlobalArgs) -> anyhow::Result<bool> {
    let queues = open(global).await?;
    match command {
        DlqCommand::List { queue, max } => {
            let queue = QueueRef::parse(&queue)?;
            let dlq = dlq_of(&queues, &queue).await?;
            existing(&queues, &dlq).await?;
            let letters = queues.peek(dlq.name(), max).await?;
            println!("{} dead letters in {dlq}", letters.len());
            for letter in letters {
                let attr = |name: &str| {
                    letter
                        .attributes
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                let reason = attr(crate::dispatch::REASON_ATTRIBUTE)
                    .unwrap_or("moved after too many receives");
                println!(
                    "- {}  receives: {}",
                    letter.id,
                    attr(crate::dispatch::RECEIVE_COUNT_ATTRIBUTE)
                        .map_or(letter.receive_count.to_string(), str::to_string)
                );
                println!("  reason: {reason}");
                if let Some(plugin) = attr(crate::dispatch::PLUGIN_ATTRIBUTE) {
                    println!("  plugin: {plugin}");
                }
                if let Some(original) = attr(crate::dispatch::MESSAGE_ID_ATTRIBUTE) {
                    println!(
                        "  was:    {original} in local://{}",
                        attr(crate::queue::SOURCE_ATTRIBUTE).unwrap_or("?")
                    );
                }
                let body: String = letter.body.chars().take(200).collect();
                println!("  body:   {body}");
            }
        }
        DlqCommand::Redrive { queue } => {
            let queue = QueueRef::parse(&queue)?;
            let dlq = dlq_of(&queues, &queue).await?;
            let moved = queues.redrive(dlq.name(), Some(queue.name())).await?;
            println!("moved {moved} messages from {dlq} back to {queue}");
        }
    }
    Ok(true)
}
