//! Where a processor's log lines go: the `log` import and its stdout and
//! stderr all become `tracing` events tagged with plugin and message id, and
//! are kept per message when the caller asks (as `wasq test` does).
//!
//! A processor cannot flood the host's log: each message may log at most
//! [`MAX_LOGGED_LINES`] lines and [`MAX_LOGGED_BYTES`] bytes, each line cut
//! at [`MAX_LINE_LEN`] and its control characters escaped; what is left out
//! is summed up in one line when the message ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines kept per message, and the longest line kept; past these the
/// processor cannot grow the host's memory through logging.
const MAX_LINES: usize = 1000;
pub const MAX_LINE_LEN: usize = 4096;
/// What one message may write to the host's log.
pub const MAX_LOGGED_LINES: u64 = 1000;
pub const MAX_LOGGED_BYTES: u64 = 256 * 1024;
/// Bytes of a partial stdout/stderr line held while waiting for its newline.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Log,
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub level: Level,
    pub source: Source,
    pub message: String,
}

/// One message's log destination; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    plugin: Arc<str>,
    message_id: Arc<str>,
    /// Some when lines are kept for the caller.
    kept: Option<Mutex<Kept>>,
    logged: Mutex<Logged>,
}

/// What one message has written to the host's log, and what was left out.
#[derive(Default)]
struct Logged {
    lines: u64,
    bytes: u64,
    left_out_lines: u64,
    left_out_bytes: u64,
}

#[derive(Default)]
struct Kept {
    lines: Vec<LogLine>,
    dropped: usize,
}

impl LogSink {
    pub fn new(plugin: Arc<str>, message_id: Arc<str>, keep: bool) -> Self {
        LogSink {
            inner: Arc::new(SinkInner {
                plugin,
                message_id,
                kept: keep.then(|| Mutex::new(Kept::default())),
                logged: Mutex::new(Logged::default()),
            }),
        }
    }

    pub fn emit(&self, level: Level, source: Source, message: &str) {
        let message = crate::text::truncate(message.trim_end_matches(['\r', '\n']), MAX_LINE_LEN);
        let within = {
            let mut logged = self.inner.logged.lock().unwrap_or_else(|p| p.into_inner());
            let len = message.len() as u64;
            if logged.lines < MAX_LOGGED_LINES && logged.bytes + len <= MAX_LOGGED_BYTES {
                logged.lines += 1;
                logged.bytes += len;
                true
            } else {
                logged.left_out_lines += 1;
                logged.left_out_bytes += len;
                false
            }
        };
        if within {
            self.log(level, source, &crate::text::escape(&message));
        }
        if let Some(kept) = &self.inner.kept {
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.lines.len() < MAX_LINES {
                kept.lines.push(LogLine {
                    level,
                    source,
                    message: message.to_string(),
                });
            } else {
                kept.dropped += 1;
            }
        }
    }

    /// Sums up, in one line, what the message's log left out. Called once
    /// the message has ended.
    pub fn finish(&self) {
        let mut logged = self.inner.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.left_out_lines > 0 {
            let text = format!(
                "{} more log lines ({} bytes) from this message were left out: at most {MAX_LOGGED_LINES} lines and {} are logged per message",
                logged.left_out_lines,
                logged.left_out_bytes,
                super::limits::Bytes(MAX_LOGGED_BYTES)
            );
            logged.left_out_lines = 0;
            logged.left_out_bytes = 0;
            drop(logged);
            self.log(Level::Warn, Source::Log, &text);
        }
    }

    fn log(&self, level: Level, source: Source, message: &str) {
        let plugin = &*self.inner.plugin;
        let message_id = &*self.inner.message_id;
        match level {
            Level::Trace => tracing::trace!(plugin, message_id, ?source, "{message}"),
            Level::Debug => tracing::debug!(plugin, message_id, ?source, "{message}"),
            Level::Info => tracing::info!(plugin, message_id, ?source, "{message}"),
            Level::Warn => tracing::warn!(plugin, message_id, ?source, "{message}"),
            Level::Error => tracing::error!(plugin, message_id, ?source, "{message}"),
        }
    }

    /// The lines kept so far, with a last line saying how many were dropped.
    pub fn lines(&self) -> Vec<LogLine> {
        let Some(kept) = &self.inner.kept else {
            return Vec::new();
        };
        let kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = kept.lines.clone();
        if kept.dropped > 0 {
            lines.push(LogLine {
                level: Level::Warn,
                source: Source::Log,
                message: format!("{} more log lines were dropped", kept.dropped),
            });
        }
        lines
    }

    /// A stdout or stderr stream for the processor's WASI context.
    pub fn stream(&self, source: Source) -> GuestOutput {
        GuestOutput {
            sink: self.clone(),
            source,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

/// The processor's stdout or stderr, cut into lines for the sink.
#[derive(Clone)]
pub struct GuestOutput {
    sink: LogSink,
    source: Source,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    /// Cuts what the processor wrote into lines, in one pass over it: the
    /// partial line held from the last write is finished by the first
    /// newline, and only the tail after the last newline is held.
    fn push(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(newline + 1);
            if pending.is_empty() {
                self.emit(line);
            } else {
                pending.extend_from_slice(line);
                let whole = std::mem::take(&mut *pending);
                self.emit(&whole);
            }
            rest = after;
        }
        pending.extend_from_slice(rest);
        if pending.len() > MAX_PENDING {
            let line = std::mem::take(&mut *pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let level = match self.source {
            Source::Stderr => Level::Warn,
            _ => Level::Info,
        };
        self.sink
            .emit(level, self.source, &String::from_utf8_lossy(line));
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last clone flushes a final line that had no newline.
        if Arc::strong_count(&self.pending) == 1 {
            let pending =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !pending.is_empty() {
                self.emit(&pending);
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_PENDING)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_and_the_tail_flushed() {
        let sink = LogSink::new("p".into(), "m".into(), true);
        let out = sink.stream(Source::Stdout);
        out.push(b"one\ntw");
        out.push(b"o\nthree");
        drop(out);
        let messages: Vec<_> = sink.lines().into_iter().map(|l| l.message).collect();
        assert_eq!(messages, ["one", "two", "three"]);
    }

    /// 3 MB of newlines once became 3,000,001 log lines.
    #[test]
    fn a_flood_is_logged_up_to_the_cap_then_summed_up() {
        let sink = LogSink::new("p".into(), "m".into(), false);
        let out = sink.stream(Source::Stdout);
        out.push(&vec![b'\n'; 3 << 20]);
        let logged = sink.inner.logged.lock().unwrap();
        assert_eq!(logged.lines, MAX_LOGGED_LINES);
        assert_eq!(logged.left_out_lines, (3 << 20) - MAX_LOGGED_LINES);
        drop(logged);
        sink.finish();
        assert_eq!(sink.inner.logged.lock().unwrap().left_out_lines, 0);
        // Bytes count too: a few long lines reach the byte cap first.
        let sink = LogSink::new("p".into(), "m".into(), false);
        for _ in 0..100 {
            sink.emit(Level::Info, Source::Log, &"x".repeat(MAX_LINE_LEN));
        }
        let logged = sink.inner.logged.lock().unwrap();
        assert_eq!(logged.bytes, MAX_LOGGED_BYTES);
        assert_eq!(logged.left_out_lines, 100 - 64);
    }

    #[test]
    fn kept_lines_are_bounded() {
        let sink = LogSink::new("p".into(), "m".into(), true);
        for i in 0..MAX_LINES + 5 {
            sink.emit(Level::Info, Source::Log, &format!("line {i}"));
        }
        let lines = sink.lines();
        assert_eq!(lines.len(), MAX_LINES + 1);
        assert_eq!(
            lines.last().unwrap().message,
            "5 more log lines were dropped"
        );
    }
}
