//! The processors page: each binding's processor as it runs now: where its
//! code came from, its hash, grants, limits, imports and exports, and its
//! last reload and what went wrong with it.

use super::pages::layout;
use super::{Console, page_response};
use crate::runtime::grants::{Prefix, Tables};
use crate::runtime::limits::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};

fn prefixes(list: &[Prefix]) -> String {
    if list.is_empty() {
        "nothing".to_string()
    } else {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn page(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Err(answer) = console.admit(&headers) {
        return *answer;
    }
    let body = html! {
        h1 { "Processors" }
        @for binding in &console.inner.bindings {
            section.processor {
                h2 { (binding.plugin) " " small { "for binding " (binding.name) } }
                (processor(binding))
            }
        }
    };
    page_response(StatusCode::OK, layout("Processors", body))
}

fn processor(binding: &super::BindingView) -> Markup {
    let Some(slot) = &binding.slot else {
        return html! { p { "No host is running this queue: there is no processor to show." } };
    };
    let reload = slot.last_reload();
    let Some(plugin) = slot.current() else {
        return html! {
            p.error { "The plugin's file is gone: the binding is paused until it returns." }
            (reload_row(reload.as_ref()))
        };
    };
    let limits = plugin.limits();
    let grants = plugin.grants();
    let identity = plugin.identity();
    html! {
        dl {
            dt { "Source" } dd { code { (plugin.source()) } }
            dt { "BLAKE3" } dd { code { (identity.blake3) } }
            dt { "Manifest" } dd { (plugin.manifest_origin().unwrap_or("none: no grants")) }
            dt { "Reads" } dd { code { (prefixes(&grants.read)) } }
            dt { "Writes" } dd { code { (prefixes(&grants.write)) } }
            dt { "Tables" } dd {
                @match &grants.tables {
                    Tables::Every => "every table",
                    Tables::Only(tables) if tables.is_empty() => "none",
                    Tables::Only(tables) => code { (tables.join(", ")) },
                }
            }
            dt { "Replaces objects" } dd { @if grants.overwrite { "yes" } @else { "never" } }
            dt { "Limits" } dd {
                "memory " (Bytes(limits.memory))
                ", time " (humantime::format_duration(limits.timeout))
                ", read " (Bytes(limits.bytes_read))
                ", written " (Bytes(limits.bytes_written))
                ", host buffers " (Bytes(limits.buffers))
                ", fuel " (limits.fuel.map_or_else(|| "not counted".to_string(), |f| f.to_string()))
            }
            dt { "Imports" } dd { @for name in &identity.imports { code { (name) } " " } }
            dt { "Exports" } dd { @for name in &identity.exports { code { (name) } " " } }
            dt { "Last reload" } dd { (reload_row(reload.as_ref())) }
        }
    }
}

fn reload_row(reload: Option<&crate::runtime::slot::Reload>) -> Markup {
    match reload {
        None => html! { "none since the host started" },
        Some(reload) => html! {
            (humantime::format_rfc3339_seconds(reload.at))
            @if let Some(error) = &reload.error {
                ": failed, the previous version runs on"
                pre.error { (error) }
            } @else { ": loaded" }
        },
    }
}
