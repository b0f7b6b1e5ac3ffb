//! The operator console, served at `/` from the same listener as
//! `/metrics`: every binding with its state, messages in flight, pollers,
//! queue and dead-letter depth and alarm, and buttons that pause and resume
//! a binding without restarting the host; and a browser of the bindings'
//! dead letters (`letters`) that searches them and redrives or deletes the
//! chosen ones.
//!
//! It reads what the dispatcher counts (the same metrics `/metrics` serves)
//! and acts through the dispatcher's own switches, so the console, the CLI
//! and Prometheus never disagree.
//!
//! The console is an attack surface, so:
//! - pages are rendered on the server with `maud`, which escapes every value
//!   (binding, queue and plugin names included); the only scripts are the
//!   console's own files (the charts), which set text, never markup;
//! - every page carries a strict Content-Security-Policy
//!   (`default-src 'none'`, styles from the console itself only), and may
//!   not be framed;
//! - every action is a POST carrying the console's CSRF token, and a
//!   cross-site POST (by `Sec-Fetch-Site` or `Origin`) is refused;
//! - on a loopback listener the console is open, to requests that name a
//!   loopback host (a page on another name that resolves to 127.0.0.1 is
//!   refused: DNS rebinding); on any other address it is served only with a
//!   token (`--console-token`, or the `WASQ_CONSOLE_TOKEN` environment
//!   variable), asked for once on a login page and then kept in an
//!   HTTP-only, same-site cookie holding a session key derived from it with
//!   a key of this process (so it ends with the process, and tells nothing
//!   of the token). No token is ever put in a URL;
//! - a page asked for by another site (`Sec-Fetch-Site: cross-site` or
//!   `same-site`) is refused: looking at SQS dead letters receives them.

mod letters;
mod pages;
mod processors;

use crate::dispatch::{Controls, Metrics, Timelines};
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The cookie a logged-in browser holds.
const SESSION_COOKIE: &str = "wasq-console";

/// What the console shows of one binding that does not change while the
/// host runs.
#[derive(Clone)]
pub struct BindingView {
    pub name: String,
    /// The queue, as `local://NAME` or its SQS URL.
    pub queue: String,
    /// The dead-letter queue's name, if the binding has one.
    pub dlq: Option<String>,
    pub plugin: String,
    pub max_concurrency: usize,
    pub dlq_alarm: Option<u64>,
    /// How the dead-letter queue is read and acted on, if there is one.
    pub admin: Option<Arc<dyn crate::queue::QueueAdmin>>,
    /// The processor's current version; `None` without a host.
    pub slot: Option<crate::runtime::PluginSlot>,
}

impl BindingView {
    /// The dead-letter queue as the console names it, with its backend
    /// (`local://NAME` or `sqs://NAME`): two bindings' dead-letter queues
    /// of one name on different backends are different queues.
    pub fn dlq_key(&self) -> Option<String> {
        let dlq = self.dlq.as_ref()?;
        Some(if self.queue.starts_with("local://") {
            format!("local://{dlq}")
        } else {
            format!("sqs://{dlq}")
        })
    }
}

/// Who may use the console.
#[derive(Clone)]
enum Access {
    /// A loopback listener without a token: anyone who can connect.
    Open,
    /// The SHA-256 of the token every request must show, and the session
    /// key a login cookie carries.
    Token { token: [u8; 32], session: [u8; 32] },
    /// A listener beyond loopback with no token: the console is off.
    Refused,
}

/// The console's state, shared by its handlers.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    bindings: Vec<BindingView>,
    metrics: Arc<Metrics>,
    controls: Controls,
    timelines: Timelines,
    access: Access,
    /// Every form carries it; a POST without it is refused.
    csrf: String,
    /// Set once the host is shutting down.
    draining: AtomicBool,
    /// Wrong tokens shown lately, by address.
    wrong_tokens: WrongTokens,
    /// Redrives and deletions under way or lately done, newest last.
    pub(super) tasks: std::sync::Mutex<std::collections::VecDeque<(String, Arc<letters::Task>)>>,
    /// Whether a host runs the bindings (`wasq run`), or the console only
    /// shows a data directory's queues (`wasq console`).
    hosted: bool,
    /// How long an action on dead letters is waited for before its
    /// progress page is shown instead.
    pub(super) wait_for_done: std::time::Duration,
}

impl Console {
    /// The console for a host listening on `listen`; `token` is required on
    /// any address but loopback.
    pub fn new(
        bindings: Vec<BindingView>,
        metrics: Arc<Metrics>,
        controls: Controls,
        timelines: Timelines,
        listen: SocketAddr,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let access = match token {
            Some(token) if token.len() < 16 => {
                anyhow::bail!("the console token must be at least 16 characters long")
            }
            Some(token) => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)?;
                let mut session = Sha256::new();
                session.update(key);
                session.update(token.as_bytes());
                Access::Token {
                    token: digest(token),
                    session: session.finalize().into(),
                }
            }
            None if listen.ip().is_loopback() => Access::Open,
            None => Access::Refused,
        };
        let mut csrf = [0u8; 32];
        getrandom::fill(&mut csrf)?;
        Ok(Console {
            inner: Arc::new(Inner {
                bindings,
                metrics,
                controls,
                timelines,
                access,
                csrf: hex::encode(csrf),
                draining: AtomicBool::new(false),
                wrong_tokens: WrongTokens::default(),
                tasks: Default::default(),
                hosted: true,
                wait_for_done: letters::WAIT_FOR_DONE,
            }),
        })
    }

    /// The console of a data directory with no host running: queues show
    /// no live state and cannot be paused.
    pub fn without_host(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.hosted = false;
        }
        self
    }

    /// Whether the console serves pages at all (it does not on a listener
    /// beyond loopback without a token).
    pub fn is_served(&self) -> bool {
        !matches!(self.inner.access, Access::Refused)
    }

    /// Marks the host as shutting down: bindings show as draining.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// The console's routes, to merge into the server's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(overview))
            .route("/login", get(login_page).post(login))
            .route("/bindings/{name}/pause", post(pause))
            .route("/bindings/{name}/resume", post(resume))
            .route("/processors", get(processors::page))
            .route("/dead-letters", get(letters::list))
            .route("/dead-letters/letter", get(letters::letter))
            .route("/dead-letters/confirm", post(letters::confirm))
            .route("/dead-letters/act", post(letters::act))
            .route("/dead-letters/progress", get(letters::progress))
            .route("/overview.json", get(overview_json))
            .route("/console.css", get(stylesheet))
            .route(
                "/console.js",
                get(|| asset("text/javascript", include_str!("console.js"))),
            )
            .route(
                "/uplot.js",
                get(|| asset("text/javascript", include_str!("assets/uPlot.iife.min.js"))),
            )
            .route(
                "/uplot.css",
                get(|| asset("text/css", include_str!("assets/uPlot.min.css"))),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                limit_wrong_tokens,
            ))
            .with_state(self.clone())
    }

    /// Whether a request may see the console: `Err` is the answer to send
    /// instead.
    fn admit(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let refused = |text: &str| {
            Err(Box::new(page_response(
                StatusCode::FORBIDDEN,
                pages::message("Refused", text),
            )))
        };
        if headers
            .get("sec-fetch-site")
            .is_some_and(|site| site == "cross-site" || site == "same-site")
        {
            return refused("The console answers its own pages only, not another site's.");
        }
        match &self.inner.access {
            Access::Open if !loopback_host(headers) => refused(
                "This console is served to loopback names only (localhost, 127.0.0.1, [::1]).",
            ),
            Access::Open => Ok(()),
            Access::Refused => Err(Box::new(page_response(
                StatusCode::FORBIDDEN,
                pages::refused(),
            ))),
            Access::Token { token, session } => {
                let by_bearer = bearer(headers).is_some_and(|shown| same(&digest(shown), token));
                let by_cookie = session_cookie(headers).is_some_and(|shown| same(&shown, session));
                if by_bearer || by_cookie {
                    Ok(())
                } else {
                    Err(Box::new(Redirect::to("/login").into_response()))
                }
            }
        }
    }

    /// Checks an action's CSRF token and that it came from the console's
    /// own pages.
    fn check_post(&self, headers: &HeaderMap, csrf: &str) -> Result<(), Box<Response>> {
        self.admit(headers)?;
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|site| site != "same-origin")
            || headers.get(header::ORIGIN).is_some_and(|origin| {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                let origin = origin.to_str().unwrap_or("");
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                host.is_none() || origin_host != host
            });
        if cross_site || digest(csrf) != digest(&self.inner.csrf) {
            return Err(Box::new(page_response(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Refused",
                    "This action did not come from the console's own page (its CSRF token is missing or wrong). Reload the console and try again.",
                ),
            )));
        }
        Ok(())
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two keys in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request names a loopback host: `localhost`, or a loopback
/// address, with any port.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The session key a login cookie holds.
fn session_cookie(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| hex::decode(value).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
}

/// A page with the console's security headers.
fn page_response(status: StatusCode, page: maud::Markup) -> Response {
    let mut response = (status, page).into_response();
    secure(response.headers_mut());
    response
}

/// The headers every console answer carries.
fn secure(headers: &mut HeaderMap) {
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the
        // console's own form posts, and the same-origin check refuses them.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// What the overview shows of one binding now.
pub struct BindingNow {
    pub view: BindingView,
    pub state: &'static str,
    pub in_flight: i64,
    pub pollers: i64,
    pub queue_depth: i64,
    pub dlq_depth: i64,
    pub alarm: bool,
    pub done: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl Console {
    fn now(&self) -> Vec<BindingNow> {
        let draining = self.inner.draining.load(Ordering::Acquire);
        self.inner
            .bindings
            .iter()
            .map(|view| {
                let m = self.inner.metrics.binding(&view.name);
                let paused = self.inner.controls.is_paused(&view.name) == Some(true);
                BindingNow {
                    state: if !self.inner.hosted {
                        "no host"
                    } else if draining {
                        "draining"
                    } else if paused {
                        "paused"
                    } else {
                        "polling"
                    },
                    in_flight: m.in_flight.get(),
                    pollers: m.pollers.get(),
                    queue_depth: m.queue_depth.get(),
                    dlq_depth: m.dlq_depth.get(),
                    alarm: m.dlq_alarm.get() > 0,
                    done: m.done.get(),
                    retried: m.retried.get(),
                    dead_lettered: m.dead_lettered.get(),
                    view: view.clone(),
                }
            })
            .collect()
    }
}

async fn overview(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    page_response(
        StatusCode::OK,
        pages::overview(&console.now(), &console.inner.csrf, console.inner.hosted),
    )
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn pause(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    switch(&console, &name, &headers, &form.csrf, true)
}

async fn resume(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    switch(&console, &name, &headers, &form.csrf, false)
}

fn switch(
    console: &Console,
    name: &str,
    headers: &HeaderMap,
    csrf: &str,
    paused: bool,
) -> Response {
    if let Err(answer) = console.check_post(headers, csrf) {
        return *answer;
    }
    if !console.inner.controls.set_paused(name, paused) {
        return page_response(
            StatusCode::NOT_FOUND,
            pages::message(
                "No such binding",
                &format!("There is no binding named `{name}`."),
            ),
        );
    }
    tracing::info!(
        binding = %crate::text::Escaped(name),
        "binding {} from the console",
        if paused { "paused" } else { "resumed" }
    );
    Redirect::to("/").into_response()
}

/// Wrong tokens one address may show in a minute; past them it is refused
/// (429) until the minute is over, the right token included.
const WRONG_TOKENS: u32 = 5;
const WRONG_TOKEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at most; past it the oldest windows are dropped.
const REMEMBERED_ADDRESSES: usize = 10_000;

/// Wrong tokens by address: how many, since when.
#[derive(Default)]
struct WrongTokens {
    by_address:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl WrongTokens {
    /// How long `address` must wait before it may try again, if at all.
    fn wait(&self, address: std::net::IpAddr) -> Option<std::time::Duration> {
        let tries = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let (count, since) = tries.get(&address)?;
        let left = WRONG_TOKEN_WINDOW.saturating_sub(since.elapsed());
        (*count >= WRONG_TOKENS && !left.is_zero()).then_some(left)
    }

    fn count(&self, address: std::net::IpAddr) {
        let mut tries = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if tries.len() >= REMEMBERED_ADDRESSES {
            tries.retain(|_, (_, since)| since.elapsed() < WRONG_TOKEN_WINDOW);
        }
        let entry = tries
            .entry(address)
            .or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= WRONG_TOKEN_WINDOW {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
        if entry.0 == WRONG_TOKENS {
            tracing::warn!(%address, "too many wrong console tokens; refusing this address for a minute");
        }
    }
}

/// Refuses an address that showed too many wrong tokens (on the login
/// form or as a bearer token), and counts the wrong ones it shows.
async fn limit_wrong_tokens(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Access::Token { token, .. } = &console.inner.access else {
        return next.run(request).await;
    };
    let Some(address) = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
    else {
        return next.run(request).await;
    };
    if let Some(wait) = console.inner.wrong_tokens.wait(address) {
        let mut response = page_response(
            StatusCode::TOO_MANY_REQUESTS,
            pages::message(
                "Too many wrong tokens",
                &format!(
                    "This address showed {WRONG_TOKENS} wrong tokens within a minute. Try again in {} s.",
                    wait.as_secs() + 1
                ),
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let wrong_bearer = bearer(request.headers()).is_some_and(|shown| !same(&digest(shown), token));
    let login = request.method() == axum::http::Method::POST && request.uri().path() == "/login";
    let response = next.run(request).await;
    if wrong_bearer || (login && response.status() == StatusCode::UNAUTHORIZED) {
        console.inner.wrong_tokens.count(address);
    }
    response
}

async fn login_page(State(console): State<Console>) -> Response {
    match console.inner.access {
        Access::Token { .. } => page_response(StatusCode::OK, pages::login(None)),
        _ => Redirect::to("/").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(console): State<Console>, Form(form): Form<LoginForm>) -> Response {
    let Access::Token { token, session } = console.inner.access else {
        return Redirect::to("/").into_response();
    };
    if !same(&digest(&form.token), &token) {
        return page_response(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the console's token.")),
        );
    }
    let mut response = Redirect::to("/").into_response();
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200",
        hex::encode(session)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn stylesheet() -> Response {
    asset("text/css", include_str!("console.css")).await
}

/// A file the console ships inside the binary.
async fn asset(kind: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct OverviewJson {
    bindings: Vec<BindingSeries>,
}

#[derive(serde::Serialize)]
struct BindingSeries {
    name: String,
    series: crate::dispatch::timeline::Series,
}

/// Each binding's last hours, for the overview's charts.
async fn overview_json(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    let bindings = console
        .inner
        .bindings
        .iter()
        .map(|b| BindingSeries {
            name: b.name.clone(),
            series: console.inner.timelines.binding(&b.name).series(),
        })
        .collect();
    let body = serde_json::to_string(&OverviewJson { bindings }).unwrap_or_default();
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    secure(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(listen: &str, token: Option<&str>) -> Console {
        Console::new(
            Vec::new(),
            Arc::new(Metrics::default()),
            Controls::default(),
            Timelines::default(),
            listen.parse().unwrap(),
            token,
        )
        .unwrap()
    }

    fn host(name: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, name.parse().unwrap());
        headers
    }

    #[test]
    fn loopback_is_open_to_loopback_names_elsewhere_a_token_is_needed() {
        let open = console("127.0.0.1:9090", None);
        for name in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "LOCALHOST",
        ] {
            assert!(open.admit(&host(name)).is_ok(), "{name}");
        }
        // DNS rebinding: another name that resolves to 127.0.0.1.
        for name in ["rebind.evil.example:9090", "127.0.0.1.evil.example", ""] {
            assert!(open.admit(&host(name)).is_err(), "{name}");
        }
        assert!(open.admit(&HeaderMap::new()).is_err());
        // Another site's page asking: refused.
        let mut cross = host("127.0.0.1:9090");
        cross.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(open.admit(&cross).is_err());

        let wide = console("0.0.0.0:9090", None);
        assert!(!wide.is_served());
        assert!(wide.admit(&host("10.0.0.1:9090")).is_err());
        let token = "0123456789abcdef-token";
        let guarded = console("0.0.0.0:9090", Some(token));
        assert!(guarded.admit(&host("10.0.0.1:9090")).is_err());
        let mut headers = host("10.0.0.1:9090");
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert!(guarded.admit(&headers).is_ok());
        let Access::Token { session, .. } = guarded.inner.access else {
            panic!("a token console");
        };
        assert!(
            !same(&session, &digest(token)),
            "the cookie would be the token's hash"
        );
        let cookie = |value: String| {
            let mut headers = host("10.0.0.1:9090");
            headers.insert(
                header::COOKIE,
                format!("a=b; {SESSION_COOKIE}={value}").parse().unwrap(),
            );
            headers
        };
        assert!(guarded.admit(&cookie(hex::encode(session))).is_ok());
        assert!(guarded.admit(&cookie(hex::encode(digest(token)))).is_err());
        // Another process's sessions do not hold.
        let restarted = console("0.0.0.0:9090", Some(token));
        assert!(restarted.admit(&cookie(hex::encode(session))).is_err());
        assert!(
            Console::new(
                Vec::new(),
                Arc::new(Metrics::default()),
                Controls::default(),
                Timelines::default(),
                "127.0.0.1:1".parse().unwrap(),
                Some("short")
            )
            .is_err()
        );
    }

    #[test]
    fn posts_need_the_token_and_the_same_origin() {
        let open = console("127.0.0.1:9090", None);
        let csrf = open.inner.csrf.clone();
        let local = host("127.0.0.1:9090");
        assert!(open.check_post(&local, "").is_err());
        assert!(open.check_post(&local, "wrong").is_err());
        assert!(open.check_post(&local, &csrf).is_ok());
        let mut cross = host("127.0.0.1:9090");
        cross.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(open.check_post(&cross, &csrf).is_err());
        let mut other = host("127.0.0.1:9090");
        other.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(open.check_post(&other, &csrf).is_err());
        other.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(open.check_post(&other, &csrf).is_ok());
    }
}
