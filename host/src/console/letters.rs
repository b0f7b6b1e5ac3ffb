//! The dead-letter browser: the letters of each binding's dead-letter
//! queue, searched and filtered, one letter in full, and redrive or delete
//! of the chosen letters or of everything a search matched, each after a
//! confirmation that states the count.
//!
//! It reads through the queue's admin interface, as `wasq dlq list` does:
//! on the embedded queue every letter is searched in place; on SQS each
//! look receives them and makes them visible again at once, which adds one
//! to their receive counts, so a look reads at most
//! [`crate::queue::LOOK_CAP`] letters.
//! Every value shown (body, reason, attributes, ids) comes from a queue
//! sender or a processor and is rendered as text.

use super::pages::layout;
use super::{Console, page_response};
use crate::queue::{
    LOOK_CAP, LetterAction, LetterFilter, LetterPage, PLUGIN_ATTRIBUTE, Peeked, QueueAdmin,
    REASON_ATTRIBUTE,
};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::sync::Arc;

/// The most words a search uses, and the longest any field may be.
const MAX_WORDS: usize = 8;
const MAX_FIELD: usize = 200;
/// The largest body shown pretty-printed; larger ones are shown as sent.
const PRETTY_UP_TO: usize = 64 << 10;
/// The last page a list goes to.
const MAX_PAGE: usize = 100_000;
/// The most letters one action on all a search matched takes.
const ALL_CAP: usize = 100_000;
/// Letters per page.
const PAGE: usize = 50;
/// How much of a body or reason a list shows.
const PREVIEW: usize = 160;

/// A search over one dead-letter queue, from the query string.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Search {
    /// The dead-letter queue, by name.
    #[serde(default)]
    pub queue: String,
    /// Words to find in the body or the reason, case-insensitively.
    #[serde(default)]
    pub q: String,
    /// The processor that dead-lettered the letter.
    #[serde(default)]
    pub plugin: String,
    /// Text in the reason.
    #[serde(default)]
    pub reason: String,
    /// Sent at or after this time (UTC, as a browser's date-time field
    /// gives it, or RFC 3339).
    #[serde(default)]
    pub from: String,
    /// Sent before this time.
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub page: usize,
}

/// A time as a date-time field gives it (`2026-11-27T09:30`, read as UTC),
/// a date, or with seconds (`2026-11-27T09:30:00Z`); in ms since the
/// epoch.
fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        16 => format!("{text}:00Z"),
        _ => text.to_string(),
    };
    let at = humantime::parse_rfc3339_weak(&full)
        .map_err(|_| format!("`{text}` is not a time like 2026-11-27T09:30 (UTC)"))?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("`{text}` is before 1970"))
}

impl Search {
    fn filter(&self) -> LetterFilter {
        let cut = |text: &str| text.chars().take(MAX_FIELD).collect::<String>();
        let given = |text: &str| Some(cut(text.trim())).filter(|t| !t.is_empty());
        let mut words: Vec<String> = Vec::new();
        for word in self.q.split_whitespace().map(cut) {
            if !words.contains(&word) && words.len() < MAX_WORDS {
                words.push(word);
            }
        }
        let time = |text: &str| {
            let text = cut(text.trim());
            parse_time(&text).ok().filter(|_| !text.is_empty())
        };
        LetterFilter {
            words,
            plugin: given(&self.plugin),
            reason: given(&self.reason),
            id: None,
            sent_from_ms: time(&self.from),
            sent_before_ms: time(&self.to),
        }
    }

    /// What is wrong with the times given, if anything: such a time is
    /// left out of the search, and the page says so.
    fn bad_times(&self) -> Vec<String> {
        [&self.from, &self.to]
            .into_iter()
            .filter(|text| !text.trim().is_empty())
            .filter_map(|text| parse_time(&text.chars().take(MAX_FIELD).collect::<String>()).err())
            .collect()
    }

    /// The query string that repeats this search.
    fn query(&self) -> String {
        serde_urlencoded::to_string([
            ("queue", self.queue.as_str()),
            ("q", self.q.as_str()),
            ("plugin", self.plugin.as_str()),
            ("reason", self.reason.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
        ])
        .unwrap_or_default()
    }
}

/// An attribute wasq wrote on the letter; a letter the queue's own redrive
/// moved carries only its sender's attributes, whatever their names.
fn wasq_attribute<'a>(letter: &'a Peeked, name: &str) -> Option<&'a str> {
    if letter.moved_by_queue {
        return None;
    }
    letter
        .attributes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The start of `text`, cut on a character boundary.
fn preview(text: &str) -> String {
    match text.char_indices().nth(PREVIEW) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn sent_at(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A binding's dead-letter queue: its backend's admin and its name there.
struct DeadLetters {
    admin: Arc<dyn QueueAdmin>,
    name: String,
}

impl Console {
    /// The dead-letter queue the console names `key` (`local://NAME` or
    /// `sqs://NAME`), if a binding of this host uses it: the console
    /// reaches no other queue, and two queues of one name on different
    /// backends stay apart.
    fn dead_letter_queue(&self, key: &str) -> Option<DeadLetters> {
        self.inner
            .bindings
            .iter()
            .find(|b| b.dlq_key().as_deref() == Some(key))
            .and_then(|b| {
                Some(DeadLetters {
                    admin: b.admin.clone()?,
                    name: b.dlq.clone()?,
                })
            })
    }

    /// The dead-letter queues of this host's bindings, each once, by key.
    fn dead_letter_queues(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for key in self.inner.bindings.iter().filter_map(|b| b.dlq_key()) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

/// The answer to a queue the console does not reach.
fn not_a_dead_letter_queue(key: &str) -> Response {
    not_found(&format!(
        "`{key}` is not the dead-letter queue of a binding of this host."
    ))
}

fn not_found(what: &str) -> Response {
    page_response(
        StatusCode::NOT_FOUND,
        super::pages::message("Not found", what),
    )
}

pub async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    let queues = console.dead_letter_queues();
    let mut search = search;
    if search.queue.is_empty()
        && let Some(first) = queues.first()
    {
        search.queue = first.clone();
    }
    let Some(dlq) = console.dead_letter_queue(&search.queue) else {
        if queues.is_empty() {
            return page_response(
                StatusCode::OK,
                super::pages::message(
                    "Dead letters",
                    "No binding of this host has a dead-letter queue.",
                ),
            );
        }
        return not_a_dead_letter_queue(&search.queue);
    };
    search.page = search.page.min(MAX_PAGE);
    let page = match dlq
        .admin
        .browse(&dlq.name, &search.filter(), search.page * PAGE, PAGE)
        .await
    {
        Ok(page) => page,
        Err(err) => return unavailable(&err.to_string()),
    };
    page_response(
        StatusCode::OK,
        list_page(&queues, &search, &page, &console.inner.csrf),
    )
}

fn unavailable(err: &str) -> Response {
    page_response(
        StatusCode::SERVICE_UNAVAILABLE,
        super::pages::message("Dead letters", &format!("Reading the queue failed: {err}")),
    )
}

fn list_page(queues: &[String], search: &Search, found: &LetterPage, csrf: &str) -> Markup {
    let matched = found.matched as usize;
    let pages = matched.div_ceil(PAGE).max(1);
    let page = search.page.min(pages - 1);
    let shown = found.letters.iter();
    layout(
        "Dead letters",
        html! {
            h1 { "Dead letters" }
            form.search method="get" action="/dead-letters" {
                label { "Queue "
                    select name="queue" {
                        @for q in queues {
                            option value=(q) selected[*q == search.queue] { (q) }
                        }
                    }
                }
                label { "Search " input type="search" name="q" value=(search.q) placeholder="body or reason"; }
                label { "Processor " input type="text" name="plugin" value=(search.plugin); }
                label { "Reason " input type="text" name="reason" value=(search.reason); }
                label { "Sent from " input type="datetime-local" name="from" value=(search.from); }
                label { "to " input type="datetime-local" name="to" value=(search.to); " UTC" }
                button type="submit" { "Search" }
            }
            @for bad in search.bad_times() {
                p.note { (bad) ": left out of the search." }
            }
            p.count {
                (matched) @if matched == 1 { " letter matches" } @else { " letters match" }
                @if !found.whole { " among the first " (LOOK_CAP) " of the queue (each look at an SQS queue reads at most that many)" }
                "."
            }
            form method="post" action="/dead-letters/confirm" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="queue" value=(search.queue);
                table.letters {
                    thead { tr {
                        th { "" } th { "Sent" } th { "Processor" } th { "Reason" } th { "Body" } th.num { "Receives" }
                    } }
                    tbody {
                        @for letter in shown {
                            tr {
                                td { input type="checkbox" name="id" value=(letter.id); }
                                td { a href={ "/dead-letters/letter?" (serde_urlencoded::to_string([("queue", search.queue.as_str()), ("id", letter.id.as_str())]).unwrap_or_default()) } { (sent_at(letter.sent_at_ms)) } }
                                td { (wasq_attribute(letter, PLUGIN_ATTRIBUTE).unwrap_or("")) }
                                td.reason { @if letter.moved_by_queue { em { "moved by the queue's redrive policy" } } @else { (preview(wasq_attribute(letter, REASON_ATTRIBUTE).unwrap_or(""))) } }
                                td.body { code { (preview(&letter.body)) } }
                                td.num { (letter.receive_count) }
                            }
                        }
                    }
                }
                p.actions {
                    button type="submit" name="action" value="redrive" { "Redrive selected" }
                    " "
                    button type="submit" name="action" value="delete" { "Delete selected" }
                }
            }
            @if matched > 0 {
                form method="post" action="/dead-letters/confirm" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="queue" value=(search.queue);
                    input type="hidden" name="all" value="1";
                    input type="hidden" name="q" value=(search.q);
                    input type="hidden" name="plugin" value=(search.plugin);
                    input type="hidden" name="reason" value=(search.reason);
                    input type="hidden" name="from" value=(search.from);
                    input type="hidden" name="to" value=(search.to);
                    p.actions {
                        button type="submit" name="action" value="redrive" { "Redrive all " (matched) " matching" }
                        " "
                        button type="submit" name="action" value="delete" { "Delete all " (matched) " matching" }
                    }
                }
            }
            @if pages > 1 {
                nav.pages {
                    @if page > 0 {
                        a href={ "/dead-letters?" (search.query()) "&page=" (page - 1) } { "← earlier" } " "
                    }
                    "page " (page + 1) " of " (pages)
                    @if page + 1 < pages && page < MAX_PAGE {
                        " " a href={ "/dead-letters?" (search.query()) "&page=" (page + 1) } { "later →" }
                    }
                }
            }
        },
    )
}

#[derive(serde::Deserialize)]
pub struct LetterQuery {
    queue: String,
    id: String,
}

pub async fn letter(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(wanted): Query<LetterQuery>,
) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    let Some(dlq) = console.dead_letter_queue(&wanted.queue) else {
        return not_a_dead_letter_queue(&wanted.queue);
    };
    let filter = LetterFilter {
        id: Some(wanted.id.clone()),
        ..LetterFilter::default()
    };
    let found = match dlq.admin.browse(&dlq.name, &filter, 0, 1).await {
        Ok(found) => found,
        Err(err) => return unavailable(&err.to_string()),
    };
    let Some(letter) = found.letters.first() else {
        return not_found(&format!(
            "No letter `{}` among the letters of `{}` read.",
            wanted.id, wanted.queue
        ));
    };
    page_response(
        StatusCode::OK,
        letter_page(&wanted.queue, letter, &console.inner.csrf),
    )
}

fn letter_page(queue: &str, letter: &Peeked, csrf: &str) -> Markup {
    let pretty = (letter.body.len() <= PRETTY_UP_TO)
        .then(|| serde_json::from_str::<serde_json::Value>(&letter.body).ok())
        .flatten()
        .and_then(|json| serde_json::to_string_pretty(&json).ok());
    let (wasqs, senders): (Vec<_>, Vec<_>) = letter
        .attributes
        .iter()
        .partition(|(name, _)| !letter.moved_by_queue && name.starts_with("wasq-"));
    layout(
        "Dead letter",
        html! {
            h1 { "Dead letter " code { (letter.id) } }
            dl {
                dt { "Dead-letter queue" } dd { code { (queue) } }
                dt { "Source queue" } dd { @if let Some(source) = &letter.source_queue { code { (source) } } @else { "unknown" } }
                dt { "Sent" } dd { (sent_at(letter.sent_at_ms)) }
                dt { "Receive count" } dd { (letter.receive_count) }
                dt { "Reason" } dd.reason {
                    @if letter.moved_by_queue {
                        "Moved by the queue's redrive policy after too many receives, not by wasq."
                    } @else {
                        pre { (wasq_attribute(letter, REASON_ATTRIBUTE).unwrap_or("none recorded")) }
                    }
                }
            }
            h2 { "Body" @if pretty.is_some() { " (JSON)" } }
            pre.body { (pretty.as_deref().unwrap_or(&letter.body)) }
            h2 { "Written by wasq" }
            @if wasqs.is_empty() { p { "Nothing." } } @else {
                table { @for (name, value) in &wasqs { tr { th { (name) } td { code { (value) } } } } }
            }
            h2 { "Set by the sender" }
            @if senders.is_empty() { p { "Nothing." } } @else {
                table { @for (name, value) in &senders { tr { th { (name) } td { code { (value) } } } } }
            }
            form method="post" action="/dead-letters/confirm" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="queue" value=(queue);
                input type="hidden" name="id" value=(letter.id);
                p.actions {
                    button type="submit" name="action" value="redrive" { "Redrive" }
                    " "
                    button type="submit" name="action" value="delete" { "Delete" }
                }
            }
        },
    )
}

/// A chosen set of letters and what to do with them, from a form: the
/// letters by id, or all that a search matches.
struct Choice {
    csrf: String,
    queue: String,
    action: Option<LetterAction>,
    ids: Vec<String>,
    /// Set for "all matching": the search that picks them.
    all: Option<Search>,
}

impl Choice {
    fn from_form(fields: Vec<(String, String)>) -> Self {
        let mut choice = Choice {
            csrf: String::new(),
            queue: String::new(),
            action: None,
            ids: Vec::new(),
            all: None,
        };
        let mut search = Search::default();
        let mut all = false;
        for (name, value) in fields {
            match name.as_str() {
                "csrf" => choice.csrf = value,
                "queue" => choice.queue = value,
                "all" => all = value == "1",
                "q" => search.q = value,
                "plugin" => search.plugin = value,
                "reason" => search.reason = value,
                "from" => search.from = value,
                "to" => search.to = value,
                "action" => {
                    choice.action = match value.as_str() {
                        "redrive" => Some(LetterAction::Redrive),
                        "delete" => Some(LetterAction::Delete),
                        _ => None,
                    }
                }
                "id" => choice.ids.push(value),
                _ => {}
            }
        }
        choice.ids.sort();
        choice.ids.dedup();
        if all {
            search.queue = choice.queue.clone();
            choice.all = Some(search);
        }
        choice
    }

    /// The hidden fields that carry this choice on.
    fn fields(&self) -> Markup {
        html! {
            input type="hidden" name="queue" value=(self.queue);
            @if let Some(search) = &self.all {
                input type="hidden" name="all" value="1";
                input type="hidden" name="q" value=(search.q);
                input type="hidden" name="plugin" value=(search.plugin);
                input type="hidden" name="reason" value=(search.reason);
                input type="hidden" name="from" value=(search.from);
                input type="hidden" name="to" value=(search.to);
            } @else {
                @for id in &self.ids { input type="hidden" name="id" value=(id); }
            }
        }
    }

    /// The ids of the letters chosen, looked up now for "all matching".
    async fn ids(&self, dlq: &DeadLetters) -> Result<Vec<String>, String> {
        match &self.all {
            // A time that is not one would be left out of the search, and
            // the action would reach letters the page did not say.
            Some(search) if !search.bad_times().is_empty() => Err(format!(
                "{}: nothing was done",
                search.bad_times().join("; ")
            )),
            Some(search) => dlq
                .admin
                .matching_ids(&dlq.name, &search.filter(), ALL_CAP)
                .await
                .map_err(|err| err.to_string()),
            None => Ok(self.ids.clone()),
        }
    }
}

fn verb(action: LetterAction) -> &'static str {
    match action {
        LetterAction::Redrive => "Redrive",
        LetterAction::Delete => "Delete",
    }
}

/// A posted choice checked: the console's own form, one of its bindings'
/// dead-letter queues, and an action.
fn chosen(
    console: &Console,
    headers: &HeaderMap,
    fields: Vec<(String, String)>,
) -> Result<(Choice, DeadLetters, LetterAction), Box<Response>> {
    let choice = Choice::from_form(fields);
    console.check_post(headers, &choice.csrf)?;
    let Some(dlq) = console.dead_letter_queue(&choice.queue) else {
        return Err(Box::new(not_a_dead_letter_queue(&choice.queue)));
    };
    let Some(action) = choice.action else {
        return Err(Box::new(page_response(
            StatusCode::BAD_REQUEST,
            super::pages::message("Nothing to do", "Choose redrive or delete."),
        )));
    };
    Ok((choice, dlq, action))
}

/// The confirmation of an action, stating the count.
pub async fn confirm(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let (choice, dlq, action) = match chosen(&console, &headers, fields) {
        Ok(chosen) => chosen,
        Err(answer) => return *answer,
    };
    let count = match &choice.all {
        Some(search) => match dlq.admin.browse(&dlq.name, &search.filter(), 0, 0).await {
            Ok(found) => (found.matched as usize).min(ALL_CAP),
            Err(err) => return unavailable(&err.to_string()),
        },
        None => choice.ids.len(),
    };
    if count == 0 {
        return page_response(
            StatusCode::OK,
            super::pages::message("Nothing chosen", "No letter was selected."),
        );
    }
    let what = match action {
        LetterAction::Redrive => "to the queues they came from, as new deliveries",
        LetterAction::Delete => "for good",
    };
    page_response(
        StatusCode::OK,
        layout(
            "Confirm",
            html! {
                h1 { (verb(action)) " " (count) " dead letters?" }
                p { (verb(action)) " " strong { (count) } " letters of " code { (choice.queue) } " " (what) "." }
                @if choice.all.is_some() {
                    p.note { "All the letters the search matches when you confirm are taken (at most " (ALL_CAP) ")." }
                }
                form method="post" action="/dead-letters/act" {
                    input type="hidden" name="csrf" value=(console.inner.csrf);
                    input type="hidden" name="action" value=(verb(action).to_lowercase());
                    (choice.fields())
                    button type="submit" { (verb(action)) " " (count) }
                    " "
                    a href={ "/dead-letters?" (serde_urlencoded::to_string([("queue", choice.queue.as_str())]).unwrap_or_default()) } { "Cancel" }
                }
            },
        ),
    )
}

/// How long an action is waited for before its progress is shown instead.
pub(super) const WAIT_FOR_DONE: std::time::Duration = std::time::Duration::from_secs(2);
/// Actions remembered for their progress pages.
const TASKS_KEPT: usize = 32;

/// A redrive or deletion under way, or done.
pub struct Task {
    action: LetterAction,
    queue: String,
    chosen: usize,
    /// Letters acted on so far.
    progress: std::sync::atomic::AtomicU64,
    /// How it ended: letters acted on, or why it failed.
    ended: std::sync::OnceLock<Result<u64, String>>,
}

impl Task {
    /// The page for the task: how far it got, or how it ended.
    fn page(&self, id: &str) -> Response {
        match self.ended.get() {
            Some(Ok(done)) => page_response(
                StatusCode::OK,
                super::pages::message(
                    "Done",
                    &format!(
                        "{} {done} of the {} letters chosen ({} were no longer there).",
                        match self.action {
                            LetterAction::Redrive => "Redrove",
                            LetterAction::Delete => "Deleted",
                        },
                        self.chosen,
                        self.chosen as u64 - (*done).min(self.chosen as u64)
                    ),
                ),
            ),
            Some(Err(err)) => page_response(
                StatusCode::SERVICE_UNAVAILABLE,
                super::pages::message("Failed", &format!("{} failed: {err}", verb(self.action))),
            ),
            None => {
                let done = self.progress.load(std::sync::atomic::Ordering::Relaxed);
                page_response(
                    StatusCode::OK,
                    super::pages::refreshing(
                        "Under way",
                        1,
                        html! {
                            h1 { (verb(self.action)) " under way" }
                            p { strong { (done) } " of " (self.chosen) " letters of " code { (self.queue) } " so far." }
                            progress value=(done) max=(self.chosen) {}
                            p.note { "This page looks again every second. "
                                a href={ "/dead-letters/progress?" (serde_urlencoded::to_string([("task", id)]).unwrap_or_default()) } { "Look now" } }
                        },
                    ),
                )
            }
        }
    }
}

/// Carries out a confirmed action. It runs on its own: an action done
/// within two seconds answers with its outcome; a longer one answers with
/// a page showing its progress.
pub async fn act(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let (choice, dlq, action) = match chosen(&console, &headers, fields) {
        Ok(chosen) => chosen,
        Err(answer) => return *answer,
    };
    let started = std::time::Instant::now();
    let ids = match choice.ids(&dlq).await {
        Ok(ids) => ids,
        Err(err) => return unavailable(&err),
    };
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        return unavailable("no randomness for a task id");
    }
    let id = hex::encode(key);
    let task = Arc::new(Task {
        action,
        queue: choice.queue.clone(),
        chosen: ids.len(),
        progress: Default::default(),
        ended: Default::default(),
    });
    {
        let mut tasks = console
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while tasks.len() >= TASKS_KEPT {
            tasks.pop_front();
        }
        tasks.push_back((id.clone(), task.clone()));
    }
    let running = {
        let task = task.clone();
        tokio::spawn(async move {
            let ended = dlq
                .admin
                .settle_letters(&dlq.name, &ids, action, &task.progress)
                .await;
            match &ended {
                Ok(done) => tracing::info!(
                    queue = %crate::text::Escaped(&task.queue),
                    chosen = ids.len(),
                    done,
                    took = ?started.elapsed(),
                    "dead letters {} from the console",
                    if action == LetterAction::Redrive { "redriven" } else { "deleted" }
                ),
                Err(err) => tracing::warn!(
                    queue = %crate::text::Escaped(&task.queue),
                    error = %err,
                    "a console action on dead letters failed"
                ),
            }
            let _ = task.ended.set(ended.map_err(|err| err.to_string()));
        })
    };
    // Whether or not it finishes in time, it runs to its end.
    let _ = tokio::time::timeout(console.inner.wait_for_done, running).await;
    if task.ended.get().is_some() {
        return task.page(&id);
    }
    Redirect::to(&format!(
        "/dead-letters/progress?{}",
        serde_urlencoded::to_string([("task", id.as_str())]).unwrap_or_default()
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
pub struct TaskQuery {
    #[serde(default)]
    task: String,
}

/// How far an action got, or how it ended.
pub async fn progress(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(wanted): Query<TaskQuery>,
) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    let task = console
        .inner
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(id, _)| *id == wanted.task)
        .map(|(_, task)| task.clone());
    match task {
        Some(task) => task.page(&wanted.task),
        None => not_found("No such action (the console keeps its last 32)."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text_of(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A binding of `queue` whose dead letters go to `jobs-dlq`.
    fn binding(queue: &str, admin: &Arc<dyn QueueAdmin>) -> super::super::BindingView {
        super::super::BindingView {
            name: queue.into(),
            queue: queue.into(),
            dlq: Some("jobs-dlq".into()),
            plugin: String::new(),
            max_concurrency: 1,
            dlq_alarm: None,
            admin: Some(admin.clone()),
            slot: None,
        }
    }

    fn loopback_console(bindings: Vec<super::super::BindingView>) -> Console {
        Console::new(
            bindings,
            Default::default(),
            Default::default(),
            Default::default(),
            ([127, 0, 0, 1], 0).into(),
            None,
        )
        .unwrap()
    }

    /// A long action shows how far it got, on a page that loads itself
    /// again every second, and then how it ended.
    #[tokio::test]
    async fn an_action_under_way_shows_its_progress_then_its_end() {
        let task = Task {
            action: LetterAction::Redrive,
            queue: "sqs://jobs-dlq".into(),
            chosen: 10,
            progress: std::sync::atomic::AtomicU64::new(3),
            ended: Default::default(),
        };
        let (status, page) = text_of(task.page("abc")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            page.contains(r#"<meta http-equiv="refresh" content="1">"#),
            "{page}"
        );
        assert!(
            page.contains("<strong>3</strong> of 10 letters of <code>sqs://jobs-dlq</code>"),
            "{page}"
        );
        assert!(page.contains(r#"<progress value="3" max="10">"#), "{page}");
        task.ended.set(Ok(9)).unwrap();
        let (_, page) = text_of(task.page("abc")).await;
        assert!(
            page.contains("Redrove 9 of the 10 letters chosen (1 were no longer there)."),
            "{page}"
        );
        assert!(!page.contains("refresh"), "{page}");
    }

    /// An action not done when the console stops waiting answers with a
    /// redirect to its progress page, which shows how far it got until it
    /// shows how it ended; the letters are redriven meanwhile, through the
    /// router as a browser would ask.
    #[tokio::test]
    async fn a_long_action_is_followed_on_its_progress_page_to_its_end() {
        use crate::queue::{LocalQueues, Outgoing, Queue as _, QueueOptions};
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let queues = LocalQueues::open(dir.path()).unwrap();
        queues
            .create("jobs", QueueOptions::default())
            .await
            .unwrap();
        queues
            .create("jobs-dlq", QueueOptions::default())
            .await
            .unwrap();
        let letters: Vec<Outgoing> = (0..10)
            .map(|i| Outgoing {
                body: format!("letter {i}"),
                attributes: vec![("wasq-source-queue".into(), "jobs".into())],
                ..Outgoing::default()
            })
            .collect();
        queues
            .queue("jobs-dlq")
            .await
            .unwrap()
            .send_batch(letters)
            .await
            .unwrap();
        let admin: Arc<dyn QueueAdmin> = Arc::new(queues.clone());
        let mut console = loopback_console(vec![binding("local://jobs", &admin)]);
        // The search index made first, as a look at the page would.
        let search = LetterFilter {
            words: vec!["letter".into()],
            ..LetterFilter::default()
        };
        assert_eq!(
            queues
                .browse("jobs-dlq", &search, 0, 50)
                .await
                .unwrap()
                .matched,
            10
        );
        // A slow backend: another writer holds the queues' database, so
        // the redrive waits for it past the console's patience.
        Arc::get_mut(&mut console.inner).unwrap().wait_for_done =
            std::time::Duration::from_millis(300);
        let writer = rusqlite::Connection::open(dir.path().join("queues.db")).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let form = serde_urlencoded::to_string([
            ("csrf", console.inner.csrf.as_str()),
            ("queue", "local://jobs-dlq"),
            ("action", "redrive"),
            ("all", "1"),
            ("q", "letter"),
        ])
        .unwrap();
        let answer = console
            .router()
            .oneshot(
                axum::http::Request::post("/dead-letters/act")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(axum::body::Body::from(form))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let to = answer.headers()["location"].to_str().unwrap().to_string();
        assert!(to.starts_with("/dead-letters/progress?task="), "{to}");
        let look = || async {
            text_of(
                console
                    .router()
                    .oneshot(
                        axum::http::Request::get(&to)
                            .header("host", "127.0.0.1")
                            .body(axum::body::Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap(),
            )
            .await
        };
        let (status, under_way) = look().await;
        assert_eq!(status, StatusCode::OK, "{under_way}");
        assert!(under_way.contains("Redrive under way"), "{under_way}");
        assert!(
            under_way.contains("<strong>0</strong> of 10 letters of <code>local://jobs-dlq</code>"),
            "{under_way}"
        );
        assert!(under_way.contains(r#"<meta http-equiv="refresh" content="1">"#));
        writer.execute_batch("COMMIT").unwrap();
        let mut pages = Vec::new();
        for _ in 0..500 {
            let (status, page) = look().await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let done = page.contains("Redrove");
            pages.push(page);
            if done {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let last = pages.last().unwrap();
        assert!(
            last.contains("Redrove 10 of the 10 letters chosen (0 were no longer there)."),
            "{last}"
        );
        for (queue, holds) in [("jobs", 10), ("jobs-dlq", 0)] {
            let stats = queues.queue(queue).await.unwrap().stats().await.unwrap();
            assert_eq!(stats.visible, holds, "{queue}");
        }
    }

    /// Two bindings whose dead-letter queues share a name, one embedded,
    /// one on SQS: the console names them apart and reaches each through
    /// its own backend.
    #[test]
    fn dead_letter_queues_of_one_name_on_two_backends_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn QueueAdmin> =
            Arc::new(crate::queue::LocalQueues::open(&dir.path().join("a")).unwrap());
        let other: Arc<dyn QueueAdmin> =
            Arc::new(crate::queue::LocalQueues::open(&dir.path().join("b")).unwrap());
        let console = loopback_console(vec![
            binding("local://jobs", &local),
            binding("https://sqs.us-east-1.amazonaws.com/1/jobs", &other),
        ]);
        assert_eq!(
            console.dead_letter_queues(),
            ["local://jobs-dlq", "sqs://jobs-dlq"]
        );
        let sqs = console.dead_letter_queue("sqs://jobs-dlq").unwrap();
        assert!(Arc::ptr_eq(&sqs.admin, &other));
        assert_eq!(sqs.name, "jobs-dlq");
        let embedded = console.dead_letter_queue("local://jobs-dlq").unwrap();
        assert!(Arc::ptr_eq(&embedded.admin, &local));
        assert!(console.dead_letter_queue("jobs-dlq").is_none());
    }

    #[test]
    fn previews_cut_on_characters() {
        let long = "é".repeat(PREVIEW + 10);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), PREVIEW + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(preview("short"), "short");
    }

    #[test]
    fn a_search_becomes_a_filter() {
        let search = Search {
            q: " job  Bounds ".into(),
            plugin: " ".into(),
            reason: "out of".into(),
            from: "2026-11-27T09:30".into(),
            to: "2026-11-28".into(),
            ..Search::default()
        };
        assert_eq!(
            search.filter(),
            LetterFilter {
                words: vec!["job".into(), "Bounds".into()],
                plugin: None,
                reason: Some("out of".into()),
                id: None,
                sent_from_ms: Some(1_795_771_800_000),
                sent_before_ms: Some(1_795_824_000_000),
            }
        );
        assert!(search.bad_times().is_empty());
        assert_eq!(
            parse_time("2026-11-27T09:30:15.5Z").unwrap(),
            1_795_771_815_500
        );
        let bad = Search {
            from: "yesterday".into(),
            to: " ".into(),
            ..Search::default()
        };
        assert_eq!(bad.filter(), LetterFilter::default());
        assert_eq!(
            bad.bad_times(),
            ["`yesterday` is not a time like 2026-11-27T09:30 (UTC)"]
        );
    }
}
