//! Which backends a host uses, chosen by address: queues by URI scheme
//! (`local://NAME`, `sqs://NAME` or an SQS queue URL), objects in a local
//! directory or S3, records in SQLite or DynamoDB. AWS clients are made on
//! first use, so a local-only host never looks for credentials.

use crate::aws::AwsOptions;
use crate::blobs::sign::LinkSigner;
use crate::blobs::{BlobStore, LocalBlobs, S3Blobs};
use crate::queue::sqs::{self, SqsQueue, SqsQueues};
use crate::queue::{LocalQueues, Queue, QueueAdmin, QueueError};
use crate::records::{DynamoRecords, Records, SqliteRecords};
use crate::runtime::Services;
use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Where local links point when nothing says otherwise.
pub const DEFAULT_LINK_BASE: &str = "http://127.0.0.1:8080";

/// The local state every command shares: the data directory (queues,
/// records, secrets), the local blob store, and where its links point.
#[derive(Debug, Clone)]
pub struct LocalEnv {
    /// Holds the records database and the link secret.
    pub data_dir: PathBuf,
    /// The blob store's root.
    pub blobs_root: PathBuf,
    /// Where signed links point: wasq's HTTP server.
    pub link_base: String,
    /// Free space the local blob store leaves on its disk.
    pub reserve: u64,
}

impl LocalEnv {
    /// Opens the blob store and records database, creating them if needed.
    pub fn open(&self) -> anyhow::Result<(LocalBlobs, Services)> {
        crate::secret::private_dir(&self.data_dir)
            .with_context(|| format!("opening data directory {}", self.data_dir.display()))?;
        let signer = LinkSigner::for_data_dir(&self.data_dir, &self.link_base)
            .with_context(|| format!("loading the link secret in {}", self.data_dir.display()))?;
        let blobs = LocalBlobs::with_reserve(&self.blobs_root, signer, self.reserve)
            .with_context(|| format!("opening blob store {}", self.blobs_root.display()))?;
        let records = SqliteRecords::open(&self.data_dir.join("records.db"))?;
        let services = Services {
            blobs: Arc::new(blobs.clone()),
            records: Arc::new(records),
        };
        Ok((blobs, services))
    }
}

/// A queue address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRef {
    /// `local://NAME`, or a bare name: the embedded queue.
    Local(String),
    /// `sqs://NAME` (looked up in the account and region of the
    /// credentials) or an SQS queue URL, `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`.
    Sqs(String),
}

impl QueueRef {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.starts_with("https://") || text.starts_with("http://") {
            let name = sqs::name_of(text);
            crate::queue::check_name(name)
                .with_context(|| format!("queue URL `{text}` does not end in a queue name"))?;
            return Ok(QueueRef::Sqs(text.to_string()));
        }
        let (local, name) = match text.split_once("://") {
            Some(("local", name)) => (true, name),
            Some(("sqs", name)) => (false, name),
            Some((scheme, _)) => bail!(
                "queue `{text}`: unknown scheme `{scheme}://` (queues are local://NAME, sqs://NAME or an SQS queue URL)"
            ),
            None => (true, text),
        };
        crate::queue::check_name(name)?;
        Ok(if local {
            QueueRef::Local(name.to_string())
        } else {
            QueueRef::Sqs(name.to_string())
        })
    }

    pub fn name(&self) -> &str {
        match self {
            QueueRef::Local(name) => name,
            QueueRef::Sqs(url_or_name) => sqs::name_of(url_or_name),
        }
    }

    /// The name (local) or the name or URL (SQS), as given.
    pub fn address(&self) -> &str {
        match self {
            QueueRef::Local(name) | QueueRef::Sqs(name) => name,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, QueueRef::Local(_))
    }

    /// The dead-letter queue a local queue gets unless told otherwise:
    /// `NAME-dlq`, or `STEM-dlq.fifo` for a FIFO queue. (An SQS queue's
    /// comes from its redrive policy.)
    pub fn default_dlq(&self) -> QueueRef {
        let name = self.name();
        let dlq = match name.strip_suffix(".fifo") {
            Some(stem) => format!("{stem}-dlq.fifo"),
            None => format!("{name}-dlq"),
        };
        self.sibling(dlq)
    }

    /// Another queue of the same backend, by the name (or SQS URL) that
    /// backend gives it.
    pub fn sibling(&self, address: String) -> QueueRef {
        match self {
            QueueRef::Local(_) => QueueRef::Local(address),
            QueueRef::Sqs(_) => QueueRef::Sqs(address),
        }
    }
}

impl std::fmt::Display for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueRef::Local(name) => write!(f, "local://{name}"),
            QueueRef::Sqs(url) if url.contains("://") => write!(f, "{url}"),
            QueueRef::Sqs(name) => write!(f, "sqs://{name}"),
        }
    }
}

/// Where objects live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BlobBackend {
    /// A directory: `DATA_DIR/blobs`, links signed and served by wasq.
    #[default]
    Local,
    /// S3 buckets, links presigned by S3.
    S3,
}

impl std::str::FromStr for BlobBackend {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "local" => Ok(BlobBackend::Local),
            "s3" => Ok(BlobBackend::S3),
            other => Err(format!("blob store `{other}` is not `local` or `s3`")),
        }
    }
}

/// Where records live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RecordsBackend {
    /// `DATA_DIR/records.db`.
    #[default]
    Sqlite,
    /// One DynamoDB table, `dynamodb://TABLE`.
    DynamoDb(String),
}

impl std::str::FromStr for RecordsBackend {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once("://") {
            None if text == "sqlite" => Ok(RecordsBackend::Sqlite),
            Some(("dynamodb", table)) if (3..=255).contains(&table.len()) => {
                Ok(RecordsBackend::DynamoDb(table.to_string()))
            }
            _ => Err(format!(
                "records store `{text}` is not `sqlite` or `dynamodb://TABLE`"
            )),
        }
    }
}

/// The backends of one host or command, opened on first use.
pub struct Backends {
    pub env: LocalEnv,
    pub aws: AwsOptions,
    pub blobs: BlobBackend,
    pub records: RecordsBackend,
    local: OnceCell<LocalQueues>,
    sdk: OnceCell<aws_config::SdkConfig>,
}

impl Backends {
    pub fn new(
        env: LocalEnv,
        aws: AwsOptions,
        blobs: BlobBackend,
        records: RecordsBackend,
    ) -> Self {
        Backends {
            env,
            aws,
            blobs,
            records,
            local: OnceCell::new(),
            sdk: OnceCell::new(),
        }
    }

    /// Local backends only.
    pub fn local(env: LocalEnv) -> Self {
        Backends::new(
            env,
            AwsOptions::default(),
            BlobBackend::Local,
            RecordsBackend::Sqlite,
        )
    }

    pub async fn sdk_config(&self) -> &aws_config::SdkConfig {
        self.sdk.get_or_init(|| self.aws.load()).await
    }

    /// The embedded queues of the data directory.
    pub async fn local_queues(&self) -> anyhow::Result<&LocalQueues> {
        self.local
            .get_or_try_init(|| async { LocalQueues::open(&self.env.data_dir) })
            .await
    }

    pub async fn sqs(&self) -> SqsQueues {
        SqsQueues::new(self.sdk_config().await)
    }

    /// The queues of `queue`'s backend, to manage: the one place an
    /// address picks its backend.
    pub async fn admin(&self, queue: &QueueRef) -> anyhow::Result<Arc<dyn QueueAdmin>> {
        Ok(match queue {
            QueueRef::Local(_) => Arc::new(self.local_queues().await?.clone()),
            QueueRef::Sqs(_) => Arc::new(self.sqs().await),
        })
    }

    /// Opens a queue that must exist; the error names it and says how to
    /// make it.
    pub async fn queue(&self, queue: &QueueRef) -> anyhow::Result<Arc<dyn Queue>> {
        let admin = self.admin(queue).await?;
        explain(queue, admin.open(queue.address()).await)
    }

    /// Opens an SQS queue that must exist (a `local://` address is taken as
    /// an SQS queue name).
    pub async fn sqs_queue(&self, queue: &QueueRef) -> anyhow::Result<SqsQueue> {
        explain(queue, self.sqs().await.queue(queue.address()).await)
    }
    /// The blob store and records processors use, and the local store when
    /// blobs are local (its links are served by wasq).
    pub async fn services(&self) -> anyhow::Result<(Option<LocalBlobs>, Services)> {
        let (local_blobs, local_services) = match (&self.blobs, &self.records) {
            (BlobBackend::Local, _) | (_, RecordsBackend::Sqlite) => {
                let (blobs, services) = self.env.open()?;
                (Some(blobs), Some(services))
            }
            _ => (None, None),
        };
        let blobs: Arc<dyn BlobStore> = match &self.blobs {
            BlobBackend::Local => Arc::new(local_blobs.clone().expect("opened above")),
            BlobBackend::S3 => Arc::new(S3Blobs::new(
                self.sdk_config().await,
                self.aws.s3_path_style,
            )),
        };
        let records: Arc<dyn Records> = match &self.records {
            RecordsBackend::Sqlite => local_services.expect("opened above").records,
            RecordsBackend::DynamoDb(table) => {
                let records = DynamoRecords::new(self.sdk_config().await, table);
                records
                    .check_table()
                    .await
                    .context("opening the records store")?;
                Arc::new(records)
            }
        };
        let links = match self.blobs {
            BlobBackend::Local => local_blobs,
            BlobBackend::S3 => None,
        };
        Ok((links, Services { blobs, records }))
    }
}

/// A queue opened, or an error that names it and says how to make it.
fn explain<T>(queue: &QueueRef, opened: Result<T, QueueError>) -> anyhow::Result<T> {
    match opened {
        Ok(opened) => Ok(opened),
        Err(QueueError::NoSuchQueue(_)) if queue.is_local() => bail!(
            "queue {queue} does not exist: create it with `wasq queue create {}` or start `wasq run --queue {queue}`",
            queue.name()
        ),
        Err(QueueError::NoSuchQueue(_)) => bail!(
            "queue {queue} does not exist in this account and region (create it with `wasq queue create {queue}`, or deploy/)"
        ),
        Err(err) => Err(err).with_context(|| format!("opening queue {queue}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_addresses_and_their_default_dead_letter_queues() {
        assert_eq!(
            QueueRef::parse("local://jobs").unwrap(),
            QueueRef::Local("jobs".into())
        );
        assert_eq!(
            QueueRef::parse("jobs").unwrap().default_dlq(),
            QueueRef::Local("jobs-dlq".into())
        );
        assert_eq!(
            QueueRef::parse("local://orders.fifo")
                .unwrap()
                .default_dlq(),
            QueueRef::Local("orders-dlq.fifo".into())
        );
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs";
        let sqs = QueueRef::parse(url).unwrap();
        assert_eq!((sqs.name(), sqs.to_string()), ("jobs", url.to_string()));
        assert_eq!(
            QueueRef::parse("sqs://jobs").unwrap().to_string(),
            "sqs://jobs"
        );
        let err = QueueRef::parse("nats://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme `nats://`"), "{err}");
        assert!(QueueRef::parse("local://bad name").is_err());
        assert!(QueueRef::parse("https://sqs.example.com/").is_err());
    }

    #[test]
    fn stores_are_named_by_scheme() {
        assert_eq!("s3".parse(), Ok(BlobBackend::S3));
        assert!("gcs".parse::<BlobBackend>().is_err());
        assert_eq!(
            "dynamodb://wasq-records".parse(),
            Ok(RecordsBackend::DynamoDb("wasq-records".into()))
        );
        assert!("postgres://x".parse::<RecordsBackend>().is_err());
    }
}
