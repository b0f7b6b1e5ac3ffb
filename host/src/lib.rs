//! wasq: a queue's messages, each handed to a sandboxed WebAssembly processor.
//!
//! Layout:
//! - [`aws`]: how the AWS backends reach AWS: the credential chain, region,
//!   endpoint, and what their errors mean.
//! - [`backends`]: which queue, blob and records backends a host uses; the
//!   local state every command shares (data directory, blob store, links).
//! - [`blobs`]: object storage (`s3://bucket/key`) behind one trait; the local
//!   directory store and its signed links.
//! - [`records`]: small durable key/value records; SQLite.
//! - [`runtime`]: the wasmtime engine, plugins, limits, and the host side of
//!   each WIT interface; it knows plugins, not queues.
//! - [`queue`]: message queues behind one trait; the embedded SQLite queue.
//! - [`dispatch`]: poll → run → settle, per binding; metrics.
//! - [`filter`]: filter criteria (Lambda's patterns) a binding admits messages by.
//! - [`fixture`]: fixture messages, in wasq's form and the Lambda SQS event form.
//! - [`offline`]: `wasq test`, running a processor on fixtures.
//! - [`payload`]: large payloads as the SQS Extended Client stores them.
//! - [`run`]: `wasq run`: backends, plugins, dispatcher and server wired up;
//!   a binding's settings against its queue's.
//! - [`reload`]: the watcher that reloads a binding's plugin when its files
//!   change.
//! - [`serve`]: the HTTP server: health, metrics, signed downloads.
//! - [`console`]: the operator console the server shows at `/`.
//! - [`secret`]: owner-only secrets on disk (link signing, the compile cache).
//! - [`text`]: attacker-chosen text escaped and bounded before it is printed.
//! - [`cli`]: the command line; the only module that knows clap.

pub mod aws;
pub mod backends;
pub mod blobs;
pub mod cli;
pub mod console;
pub mod dispatch;
pub mod filter;
pub mod fixture;
pub mod offline;
pub mod payload;
pub mod queue;
pub mod records;
pub mod reload;
pub mod run;
pub mod runtime;
pub mod secret;
pub mod serve;
mod sqlite;
pub mod text;
