//! The alarm on a binding's dead-letter queue, as a CloudWatch alarm on a
//! DLQ's depth would be: checked on every stats tick, it fires once when the
//! depth goes over the binding's `dlq-alarm` threshold and clears once when
//! it is back at or under it. Firing and clearing each log one line, set the
//! `wasq_dlq_alarm` gauge, and, with `--alarm-webhook`, POST a JSON
//! notification, retried with backoff on a task of its own so that dispatch
//! never waits for it.

use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;
use tracing::{info, warn};

/// Attempts per notification, the first wait between them, and the longest.
const ATTEMPTS: u32 = 6;
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Where alarm notifications are POSTed.
#[derive(Clone)]
pub struct Webhook {
    url: hyper::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a token: only its host is shown.
        write!(f, "Webhook({})", self.url.host().unwrap_or("?"))
    }
}

impl Webhook {
    /// A webhook at `url`, `http://` or `https://` (checked against the
    /// system's trusted roots).
    pub fn new(url: &str) -> anyhow::Result<Webhook> {
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|err| anyhow::anyhow!("alarm webhook `{url}` is not a URL: {err}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme_str(), Some("http") | Some("https")) && parsed.host().is_some(),
            "alarm webhook `{url}` is not an http:// or https:// URL"
        );
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|err| anyhow::anyhow!("loading the system's trusted roots: {err}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Webhook {
            url: parsed,
            client,
        })
    }

    /// POSTs `body`, trying again with backoff, on a task of its own.
    pub fn notify(&self, body: serde_json::Value) {
        let hook = self.clone();
        tokio::spawn(async move {
            let mut wait = FIRST_WAIT;
            for attempt in 1..=ATTEMPTS {
                match hook.post(&body).await {
                    Ok(()) => return,
                    Err(err) if attempt == ATTEMPTS => {
                        warn!(webhook = ?hook, error = %err, attempts = ATTEMPTS, "could not deliver the alarm notification");
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(LONGEST_WAIT);
                    }
                }
            }
        });
    }

    async fn post(&self, body: &serde_json::Value) -> anyhow::Result<()> {
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
        anyhow::ensure!(
            response.status().is_success(),
            "answered {}",
            response.status()
        );
        Ok(())
    }
}

/// One binding's alarm.
pub struct Alarm {
    threshold: u64,
    firing: bool,
    gauge: Gauge,
    webhook: Option<Webhook>,
}

impl Alarm {
    pub fn new(threshold: u64, gauge: Gauge, webhook: Option<Webhook>) -> Alarm {
        gauge.set(0);
        Alarm {
            threshold,
            firing: false,
            gauge,
            webhook,
        }
    }

    /// Looks at the DLQ's depth; fires or clears on a crossing.
    pub fn observe(&mut self, binding: &str, dlq: &str, depth: u64, newest_reason: Option<&str>) {
        let over = depth > self.threshold;
        if over == self.firing {
            return;
        }
        self.firing = over;
        self.gauge.set(i64::from(over));
        let reason = newest_reason.map(crate::text::escape);
        if over {
            warn!(
                binding,
                dlq,
                depth,
                threshold = self.threshold,
                newest_reason = reason.as_deref().unwrap_or("(none recorded by this host)"),
                "dead-letter alarm: the dead-letter queue holds more than its threshold"
            );
        } else {
            info!(
                binding,
                dlq,
                depth,
                threshold = self.threshold,
                "dead-letter alarm cleared"
            );
        }
        if let Some(webhook) = &self.webhook {
            webhook.notify(serde_json::json!({
                "alarm": "wasq_dlq_alarm",
                "state": if over { "firing" } else { "cleared" },
                "binding": binding,
                "dlq": dlq,
                "depth": depth,
                "threshold": self.threshold,
                "newest_reason": reason,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_fires_once_over_the_threshold_and_clears_once_under() {
        let gauge = Gauge::default();
        let mut alarm = Alarm::new(1, gauge.clone(), None);
        alarm.observe("b", "b-dlq", 1, None);
        assert_eq!(gauge.get(), 0);
        alarm.observe("b", "b-dlq", 3, Some("bad job"));
        assert!(alarm.firing);
        assert_eq!(gauge.get(), 1);
        alarm.observe("b", "b-dlq", 5, Some("bad job"));
        assert_eq!(gauge.get(), 1);
        alarm.observe("b", "b-dlq", 0, None);
        assert!(!alarm.firing);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn webhooks_must_be_http_urls() {
        assert!(Webhook::new("ftp://example.com/x").is_err());
        assert!(Webhook::new("not a url").is_err());
        assert!(Webhook::new("http://127.0.0.1:9/hook").is_ok());
    }
}
