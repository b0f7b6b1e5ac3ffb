//! The console's pages. `maud` escapes every value it interpolates, so a
//! name holding markup shows as text.

use super::BindingNow;
use maud::{DOCTYPE, Markup, html};

pub(super) fn layout(title: &str, body: Markup) -> Markup {
    page(title, None, body)
}

/// A page that loads itself again every `secs` seconds (a progress page;
/// no script needed).
pub(super) fn refreshing(title: &str, secs: u32, body: Markup) -> Markup {
    page(title, Some(secs), body)
}

fn page(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
                title { (title) " · wasq" }
                link rel="stylesheet" href="/uplot.css";
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    a.brand href="/" { "wasq" }
                    nav { a href="/" { "Overview" } " " a href="/dead-letters" { "Dead letters" } " " a href="/processors" { "Processors" } }
                }
                main { (body) }
            }
        }
    }
}

pub fn overview(bindings: &[BindingNow], csrf: &str, hosted: bool) -> Markup {
    layout(
        "Overview",
        html! {
            h1 { @if hosted { "Bindings" } @else { "Queues" } }
            @if !hosted {
                p.note { "No host is running here: this console shows the data directory's queues that have a dead-letter queue, and their dead letters. Start " code { "wasq run" } " for live bindings." }
            }
            table.bindings {
                thead {
                    tr {
                        th { "Binding" } th { "Queue" } th { "Processor" } th { "State" }
                        th.num { "In flight" } th.num { "Pollers" } th.num { "Queue depth" }
                        th { "Dead-letter queue" } th.num { "DLQ depth" } th { "Alarm" }
                        th.num { "Done" } th.num { "Retried" } th.num { "Dead-lettered" }
                        th { "" }
                    }
                }
                tbody {
                    @for b in bindings {
                        tr data-binding=(b.view.name) {
                            td { (b.view.name) }
                            td { code { (b.view.queue) } }
                            td { (b.view.plugin) }
                            td { span class={ "state " (b.state) } { (b.state) } }
                            td.num { (b.in_flight) " / " (b.view.max_concurrency) }
                            td.num { (b.pollers) }
                            td.num { (b.queue_depth) }
                            td {
                                @if let (Some(dlq), Some(key)) = (&b.view.dlq, b.view.dlq_key()) {
                                    a href={ "/dead-letters?" (serde_urlencoded::to_string([("queue", key.as_str())]).unwrap_or_default()) } { code { (dlq) } }
                                } @else { "none" }
                            }
                            td.num { (b.dlq_depth) }
                            td {
                                @match (b.view.dlq_alarm, b.alarm) {
                                    (None, _) => "off",
                                    (Some(threshold), true) => span.alarm { "over " (threshold) },
                                    (Some(threshold), false) => { "under " (threshold) },
                                }
                            }
                            td.num { (b.done) }
                            td.num { (b.retried) }
                            td.num { (b.dead_lettered) }
                            td {
                                @let action = if b.state == "paused" { "resume" } else { "pause" };
                                @if b.state == "polling" || b.state == "paused" {
                                    form method="post" action={ "/bindings/" (path_segment(&b.view.name)) "/" (action) } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" { (action) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.note {
                "Pausing a binding stops its receives: messages wait in the queue, and those in flight finish. "
                "Counts are since this host started; /metrics has them all."
            }
            h2 { "The last hours" }
            div #charts {}
            script src="/uplot.js" {}
            script src="/console.js" {}
        },
    )
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        html! {
            h1 { "wasq console" }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action="/login" {
                label for="token" { "Console token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn refused() -> Markup {
    message(
        "Console off",
        "This host listens beyond loopback and was given no console token, so the console is off. Start it with --console-token (or WASQ_CONSOLE_TOKEN), or listen on 127.0.0.1.",
    )
}

pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        html! {
            h1 { (title) }
            p { (text) }
            p { a href="/" { "Back to the console" } }
        },
    )
}

/// A binding name as one URL path segment.
fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}
