//! What the dispatcher counts, per binding, in Prometheus's data model.

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

/// Every metric of every binding, and the registry that renders them.
pub struct Metrics {
    registry: Mutex<Registry>,
    received: Family<BindingLabel, Counter>,
    done: Family<BindingLabel, Counter>,
    retried: Family<BindingLabel, Counter>,
    rejected: Family<BindingLabel, Counter>,
    dead_lettered: Family<BindingLabel, Counter>,
    deleted: Family<BindingLabel, Counter>,
    in_flight: Family<BindingLabel, Gauge>,
    pollers: Family<BindingLabel, Gauge>,
    queue_depth: Family<BindingLabel, Gauge>,
    dlq_depth: Family<BindingLabel, Gauge>,
    handle_seconds: Family<BindingLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("wasq")),
            received: Family::default(),
            done: Family::default(),
            retried: Family::default(),
            rejected: Family::default(),
            dead_lettered: Family::default(),
            deleted: Family::default(),
            in_flight: Family::default(),
            pollers: Family::default(),
            queue_depth: Family::default(),
            dlq_depth: Family::default(),
            handle_seconds: Family::new_with_constructor(duration_histogram),
        };
        {
            let mut registry = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.register(
                "messages_received",
                "Messages received from the queue",
                metrics.received.clone(),
            );
            registry.register(
                "messages_done",
                "Messages processed and deleted",
                metrics.done.clone(),
            );
            registry.register(
                "messages_retried",
                "Messages set to be redelivered after a backoff",
                metrics.retried.clone(),
            );
            registry.register(
                "messages_rejected",
                "Messages the processor rejected",
                metrics.rejected.clone(),
            );
            registry.register(
                "messages_dead_lettered",
                "Messages sent to the dead-letter queue (rejected or out of receives)",
                metrics.dead_lettered.clone(),
            );
            registry.register(
                "messages_deleted",
                "Messages deleted from the queue (done, dead-lettered or dropped)",
                metrics.deleted.clone(),
            );
            registry.register(
                "messages_in_flight",
                "Messages being processed now",
                metrics.in_flight.clone(),
            );
            registry.register(
                "queue_depth",
                "Messages visible in the queue",
                metrics.queue_depth.clone(),
            );
            registry.register(
                "dlq_depth",
                "Messages in the dead-letter queue",
                metrics.dlq_depth.clone(),
            );
            registry.register(
                "handle_duration_seconds",
                "Time to instantiate and run the processor on one message",
                metrics.handle_seconds.clone(),
            );
        }
        metrics
    }
}

impl Metrics {
    /// The metrics of one binding.
    pub fn binding(&self, name: &str) -> BindingMetrics {
        let label = BindingLabel {
            binding: name.to_string(),
        };
        BindingMetrics {
            received: self.received.get_or_create(&label).clone(),
            done: self.done.get_or_create(&label).clone(),
            retried: self.retried.get_or_create(&label).clone(),
            rejected: self.rejected.get_or_create(&label).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&label).clone(),
            deleted: self.deleted.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            pollers: self.pollers.get_or_create(&label).clone(),
            queue_depth: self.queue_depth.get_or_create(&label).clone(),
            dlq_depth: self.dlq_depth.get_or_create(&label).clone(),
            handle_seconds: self.handle_seconds.get_or_create(&label).clone(),
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One binding's handles on its metrics; cheap to clone.
#[derive(Clone)]
pub struct BindingMetrics {
    pub received: Counter,
    pub done: Counter,
    pub retried: Counter,
    pub rejected: Counter,
    pub dead_lettered: Counter,
    pub deleted: Counter,
    pub in_flight: Gauge,
    pub pollers: Gauge,
    pub queue_depth: Gauge,
    pub dlq_depth: Gauge,
    pub handle_seconds: Histogram,
}
