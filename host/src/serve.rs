//! wasq's HTTP server: health and readiness, Prometheus metrics, and the
//! local store's signed download links (with Range support).

use crate::blobs::LocalBlobs;
use crate::blobs::sign::{LINK_PREFIX, LinkError};
use crate::dispatch::{Metrics, Readiness};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// What the server answers from.
#[derive(Clone)]
pub struct ServeState {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The local store, whose signer checks the links; `None` when blobs
    /// live elsewhere (S3 signs its own links).
    pub links: Option<LocalBlobs>,
}

pub fn router(state: ServeState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/blobs/{*path}", get(download))
        .with_state(state)
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

async fn download(State(state): State<ServeState>, request: Request) -> Response {
    let Some(blobs) = &state.links else {
        return (StatusCode::NOT_FOUND, "this server signs no local links\n").into_response();
    };
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    debug_assert!(path.starts_with(LINK_PREFIX));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let uri = match blobs.signer().verify(&path, &query, now) {
        Ok(uri) => uri,
        Err(LinkError::Malformed(why)) => {
            return (StatusCode::FORBIDDEN, format!("malformed link: {why}\n")).into_response();
        }
        Err(err) => return (StatusCode::FORBIDDEN, format!("{err}\n")).into_response(),
    };
    let file = match blobs.path_of(&uri) {
        Ok(file) if file.is_file() => file,
        Ok(_) => return (StatusCode::NOT_FOUND, format!("no object at {uri}\n")).into_response(),
        Err(err) => return (StatusCode::FORBIDDEN, format!("{err}\n")).into_response(),
    };
    // ServeFile answers Range and conditional requests and sets the length
    // and content type.
    match ServeFile::new(file).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {uri}: {err}\n"),
        )
            .into_response(),
    }
}
