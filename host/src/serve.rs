//! wasq's HTTP server: health and readiness, Prometheus metrics, and the
//! local store's signed download links.
//!
//! The link origin serves bytes a queue sender chose, so every download is
//! an attachment that no browser renders or sniffs (`Content-Disposition:
//! attachment`, `nosniff`, a sandboxing `Content-Security-Policy`), and only
//! the version of the object the link was made for is served.
//!
//! No client can hold the server: a request head must arrive within a
//! timeout (hyper's `header_read_timeout`); a connection that moves no byte
//! either way for a while (a reader that stopped reading) is closed; every
//! connection has a lifetime, after which it is closed once its request is
//! answered; and connections past a cap in all, or past a smaller cap from
//! one address, are closed as they arrive. (Neither hyper nor tower-http
//! caps connections, so that count is kept here.)

use crate::blobs::sign::{LINK_PREFIX, LinkError};
use crate::blobs::{BlobError, LocalBlobs};
use crate::dispatch::{Metrics, Readiness};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the server answers from.
#[derive(Clone)]
pub struct ServeState {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The local store, whose signer checks the links; `None` when blobs
    /// live elsewhere (S3 signs its own links).
    pub links: Option<LocalBlobs>,
    /// The operator console at `/`, if this server shows one.
    pub console: Option<crate::console::Console>,
}

/// How the server guards its connections.
#[derive(Debug, Clone, Copy)]
pub struct Guards {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections from one address at once.
    pub max_per_address: usize,
    /// How long a client has to send a request head, the first one or the
    /// next on a kept-alive connection.
    pub header_timeout: Duration,
    /// How long a connection may go without a byte read or written.
    pub stall_timeout: Duration,
    /// How long a connection lives; then it is closed once its request in
    /// progress is answered.
    pub lifetime: Duration,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_connections: 512,
            max_per_address: 64,
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            lifetime: Duration::from_secs(600),
        }
    }
}

/// A connection's stream, noting when a byte last moved either way.
struct Watched<S> {
    inner: S,
    last: Arc<std::sync::atomic::AtomicU64>,
    started: tokio::time::Instant,
}

impl<S> Watched<S> {
    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn router(state: ServeState) -> Router {
    let console = state.console.as_ref().map(|console| console.router());
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/blobs/{*path}", get(download).head(download))
        .with_state(state);
    match console {
        Some(console) => router.merge(console),
        None => router,
    }
}

/// Serves `router` on `listener` until `stop` fires, then lets requests in
/// progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    guards: Guards,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(guards.max_connections));
    let per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Default::default();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or the like: wait, never spin.
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many HTTP connections; closing a new one");
            continue;
        };
        let address = AddressSlot::take(&per_address, peer.ip(), guards.max_per_address);
        let Some(address) = address else {
            tracing::debug!(%peer, "too many HTTP connections from one address; closing a new one");
            continue;
        };
        // Each request knows the address it came from (the console limits
        // wrong tokens by it).
        let service =
            hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                router.clone(),
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                },
            ));
        let stop = stop.clone();
        connections.spawn(async move {
            let (_permit, _address) = (permit, address);
            let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let started = tokio::time::Instant::now();
            let stream = Watched {
                inner: stream,
                last: last.clone(),
                started,
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(guards.header_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let lifetime = tokio::time::sleep(guards.lifetime);
            tokio::pin!(lifetime);
            let mut checks =
                tokio::time::interval(guards.stall_timeout.min(Duration::from_secs(1)));
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = stop.cancelled(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = &mut lifetime, if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = checks.tick() => {
                        let idle = started.elapsed().as_millis() as u64
                            - last.load(std::sync::atomic::Ordering::Relaxed);
                        // Nothing moved for too long: a client that stopped
                        // reading (or sending) loses the connection.
                        if Duration::from_millis(idle) >= guards.stall_timeout {
                            tracing::debug!(%peer, "closing a stalled HTTP connection");
                            return;
                        }
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A connection counted against its address's cap until dropped.
struct AddressSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<AddressSlot> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn readyz(State(state): State<ServeState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not every binding has polled yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<ServeState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Media types a download keeps; anything else (HTML, SVG, XML, scripts)
/// goes out as `application/octet-stream`, so no link can carry a page.
const PASSIVE_TYPES: &[&str] = &[
    "application/zip",
    "application/gzip",
    "application/pdf",
    "application/json",
    "application/octet-stream",
    "text/plain",
    "text/csv",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
];

fn refuse(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    secure(response.headers_mut());
    response
}

/// The headers every answer on the link origin carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `attachment; filename="…"; filename*=UTF-8''…` for a key's last segment
/// (RFC 6266): the quoted form keeps only safe ASCII.
fn disposition(key: &str) -> HeaderValue {
    let name = key.rsplit('/').next().unwrap_or("download");
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .-_()+,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

async fn download(State(state): State<ServeState>, request: Request) -> Response {
    let Some(blobs) = state.links.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this server signs no local links\n".into(),
        );
    };
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    debug_assert!(path.starts_with(LINK_PREFIX));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (uri, version) = match blobs.signer().verify(&path, &query, now) {
        Ok(granted) => granted,
        Err(LinkError::Malformed(why)) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("malformed link: {}\n", crate::text::escape(&why)),
            );
        }
        Err(err) => return refuse(StatusCode::FORBIDDEN, format!("{err}\n")),
    };
    let target = uri.clone();
    let opened = tokio::task::spawn_blocking(move || blobs.open_object(&target)).await;
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(BlobError::NotFound(_))) => {
            return refuse(StatusCode::NOT_FOUND, format!("no object at {uri}\n"));
        }
        Ok(Err(err)) => return refuse(StatusCode::FORBIDDEN, format!("{err}\n")),
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    };
    if opened.info.etag.as_deref() != Some(version.as_str()) {
        return refuse(
            StatusCode::GONE,
            format!("{uri} has changed since this link was made\n"),
        );
    }
    let size = opened.info.size;
    let etag = format!("\"{version}\"");
    let content_type = opened
        .info
        .content_type
        .as_deref()
        .filter(|t| PASSIVE_TYPES.contains(t))
        .unwrap_or("application/octet-stream");

    let headers = request.headers();
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_DISPOSITION, disposition(uri.key()))
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-transform");
    response = response.header(
        header::LAST_MODIFIED,
        httpdate::fmt_http_date(opened.modified),
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut response = response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
        secure(response.headers_mut());
        return response;
    }
    // A Range applies only while If-Range (when given) still names this
    // version; otherwise the whole object is sent.
    let range_applies = match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|v| v.trim() == etag),
    };
    let range = match headers.get(header::RANGE).filter(|_| range_applies) {
        None => None,
        Some(value) => match byte_range(value, size) {
            Span::Whole => None,
            Span::Part(first, last) => Some((first, last)),
            Span::Unsatisfiable => {
                let mut response = Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .unwrap_or_default();
                secure(response.headers_mut());
                return response;
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            response =
                response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    let body = if request.method() == axum::http::Method::HEAD {
        Body::empty()
    } else {
        let mut file = tokio::fs::File::from_std(opened.file);
        if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {uri} failed\n"),
            );
        }
        Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)))
    };
    let mut response = response
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_default();
    secure(response.headers_mut());
    response
}

/// What a `Range` header asks of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The whole object: no byte range, or several (which a server may
    /// answer whole).
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    /// No asked range fits the object.
    Unsatisfiable,
}

/// The span a `Range` header asks for.
pub fn byte_range(value: &HeaderValue, size: u64) -> Span {
    let Ok(text) = value.to_str() else {
        return Span::Whole;
    };
    let parsed = match http_range_header::parse_range_header(text) {
        Ok(parsed) => parsed,
        // Not a byte range the crate understands: ignore it (RFC 9110).
        Err(_) => return Span::Whole,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => Span::Part(*ranges[0].start(), *ranges[0].end()),
        Ok(_) => Span::Whole,
        Err(_) => Span::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dispositions_are_attachments_with_safe_names() {
        assert_eq!(
            disposition("a/b/report \"x\".html"),
            "attachment; filename=\"report _x_.html\"; filename*=UTF-8''report%20%22x%22%2Ehtml"
        );
    }

    #[test]
    fn ranges_pick_one_span_or_the_whole() {
        let range = |text: &str, size| byte_range(&HeaderValue::from_str(text).unwrap(), size);
        assert_eq!(range("bytes=0-9", 100), Span::Part(0, 9));
        assert_eq!(range("bytes=90-", 100), Span::Part(90, 99));
        assert_eq!(range("bytes=-10", 100), Span::Part(90, 99));
        assert_eq!(range("bytes=0-1,5-6", 100), Span::Whole);
        assert_eq!(range("bytes=200-300", 100), Span::Unsatisfiable);
        assert_eq!(range("lines=1-2", 100), Span::Whole);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Whatever a client sends as `Range`, the span served lies inside
        /// the object and is never empty.
        #[test]
        fn any_range_header_stays_inside_the_object(text in "bytes=[0-9,-]{0,20}|[ -~]{0,30}", size in 0u64..10_000) {
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            if let Span::Part(first, last) = byte_range(&value, size) {
                prop_assert!(first <= last);
                prop_assert!(last < size);
            }
        }
    }
}
