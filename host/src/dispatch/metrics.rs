//! What the dispatcher counts, per binding, in Prometheus's data model.
//! Each metric is declared once, in the table at the bottom of this file;
//! the registry, the per-binding handles and the list of names all come
//! from it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindingLabel {
    pub binding: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
    ])
}

macro_rules! family {
    (counter) => { Family<BindingLabel, Counter> };
    (gauge) => { Family<BindingLabel, Gauge> };
    (histogram) => { Family<BindingLabel, Histogram, fn() -> Histogram> };
}

macro_rules! new_family {
    (counter) => {
        Family::default()
    };
    (gauge) => {
        Family::default()
    };
    (histogram) => {
        Family::new_with_constructor(duration_histogram)
    };
}

macro_rules! handle {
    (counter) => {
        Counter
    };
    (gauge) => {
        Gauge
    };
    (histogram) => {
        Histogram
    };
}

/// How a metric's name appears in the exposition: counters get `_total`.
macro_rules! exposed {
    (counter, $name:literal) => {
        concat!("wasq_", $name, "_total")
    };
    (gauge, $name:literal) => {
        concat!("wasq_", $name)
    };
    (histogram, $name:literal) => {
        concat!("wasq_", $name)
    };
}

macro_rules! metrics {
    ($($field:ident: $kind:ident, $name:literal, $help:literal;)*) => {
        /// Every metric of every binding, and the registry that renders them.
        pub struct Metrics {
            registry: Mutex<Registry>,
            $($field: family!($kind),)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let metrics = Metrics {
                    registry: Mutex::new(Registry::with_prefix("wasq")),
                    $($field: new_family!($kind),)*
                };
                {
                    let mut registry = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
                    $(registry.register($name, $help, metrics.$field.clone());)*
                }
                metrics
            }
        }

        /// One binding's handles on its metrics; cheap to clone.
        #[derive(Clone)]
        pub struct BindingMetrics {
            $(pub $field: handle!($kind),)*
        }

        impl Metrics {
            /// The metrics of one binding.
            pub fn binding(&self, name: &str) -> BindingMetrics {
                let label = BindingLabel {
                    binding: name.to_string(),
                };
                BindingMetrics {
                    $($field: self.$field.get_or_create(&label).clone(),)*
                }
            }
        }

        /// Every metric's name as `/metrics` serves it, and its help text.
        pub const NAMES: &[(&str, &str)] = &[$((exposed!($kind, $name), $help),)*];
    };
}

metrics! {
    received: counter, "messages_received", "Messages received from the queue (Lambda's PolledEventCount)";
    filtered_out: counter, "messages_filtered_out", "Messages that matched none of the binding's filters, deleted unprocessed (Lambda's FilteredOutEventCount)";
    invoked: counter, "messages_invoked", "Messages handed to the processor (Lambda's InvokedEventCount)";
    failed: counter, "invocations_failed", "Processor runs that did not end done: a retry, a reject, a trap or a limit (Lambda's FailedInvokeEventCount)";
    done: counter, "messages_done", "Messages processed and deleted";
    retried: counter, "messages_retried", "Messages set to be redelivered after a backoff";
    rejected: counter, "messages_rejected", "Messages the processor rejected";
    given_back: counter, "messages_given_back", "Messages received and given back unstarted for the host's own reasons (a pause, a shutdown, a removed plugin, a FIFO group held back), no attempt counted";
    dead_lettered: counter, "messages_dead_lettered", "Messages sent to the dead-letter queue (rejected or out of receives)";
    dropped: counter, "messages_dropped", "Messages rejected or out of receives and deleted because the binding has no dead-letter queue, by the operator's choice (Lambda's DroppedEventCount)";
    deleted: counter, "messages_deleted", "Messages the host deleted from the queue: done, dead-lettered, dropped or filtered out, or sent again as a fresh copy (Lambda's DeletedEventCount); not those a queue's own redrive policy moves";
    in_flight: gauge, "messages_in_flight", "Messages being processed now";
    pollers: gauge, "pollers", "Pollers receiving for the binding now";
    queue_depth: gauge, "queue_depth", "Messages visible or delayed in the queue";
    dlq_depth: gauge, "dlq_depth", "Messages in the dead-letter queue";
    dlq_alarm: gauge, "dlq_alarm", "1 while the dead-letter queue holds more than the binding's dlq-alarm threshold";
    paused: gauge, "paused", "1 while the binding is paused (from the console): its pollers receive nothing";
    last_receive: gauge, "last_receive_timestamp_seconds", "When the binding last finished a receive (Unix seconds), messages or not";
    oldest_received_age: gauge, "oldest_received_age_seconds", "Age, since it was sent, of the oldest message received since the last stats tick";
    handle_seconds: histogram, "handle_duration_seconds", "Time to instantiate and run the processor on one message";
}

impl Metrics {
    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pollers` was once declared and never registered.
    #[test]
    fn every_declared_metric_is_served() {
        let metrics = Metrics::default();
        metrics.binding("b");
        let text = metrics.render();
        for (name, help) in NAMES {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} is not served"
            );
            assert!(text.contains(help), "{help}");
        }
    }
}
