//! Where a processor's log lines go: the `log` import and its stdout and
//! stderr all become `tracing` events tagged with plugin and message id, and
//! are kept per message when the caller asks (as `wasq test` does).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines kept per message, and the longest line kept; past these the
/// processor cannot grow the host's memory through logging.
const MAX_LINES: usize = 1000;
const MAX_LINE_LEN: usize = 4096;
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
            }),
        }
    }

    pub fn emit(&self, level: Level, source: Source, message: &str) {
        let message = truncate(message.trim_end_matches(['\r', '\n']), MAX_LINE_LEN);
        let plugin = &*self.inner.plugin;
        let message_id = &*self.inner.message_id;
        match level {
            Level::Trace => tracing::trace!(plugin, message_id, ?source, "{message}"),
            Level::Debug => tracing::debug!(plugin, message_id, ?source, "{message}"),
            Level::Info => tracing::info!(plugin, message_id, ?source, "{message}"),
            Level::Warn => tracing::warn!(plugin, message_id, ?source, "{message}"),
            Level::Error => tracing::error!(plugin, message_id, ?source, "{message}"),
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

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The processor's stdout or stderr, cut into lines for the sink.
#[derive(Clone)]
pub struct GuestOutput {
    sink: LogSink,
    source: Source,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    fn push(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend_from_slice(bytes);
        while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            self.emit(&line);
        }
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
