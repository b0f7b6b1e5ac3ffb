//! Queue and dead-letter depths on every stats tick: the gauges, the
//! readiness of the binding, and the dead-letter alarm.

use super::*;

impl BindingState {
    /// The binding's queue has answered: the host is ready as far as this
    /// binding goes.
    pub(super) fn mark_ready(&self) {
        if !self.polled.swap(true, Ordering::AcqRel) {
            self.readiness.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Refreshes the queue and DLQ depth gauges until shutdown.
    pub(super) async fn depth_loop(self: Arc<Self>) {
        loop {
            if let Ok(stats) = self.binding.queue.stats().await {
                // The queue answered (a long poll on an empty queue would
                // not for up to 20 s).
                self.mark_ready();
                self.metrics
                    .queue_depth
                    .set((stats.visible + stats.delayed) as i64);
            }
            if let Some(dlq) = &self.binding.dlq
                && let Ok(stats) = dlq.stats().await
            {
                let depth = stats.visible + stats.in_flight + stats.delayed;
                self.metrics.dlq_depth.set(depth as i64);
                if let Some(alarm) = &self.alarm {
                    let newest = self
                        .newest_reason
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    alarm.lock().unwrap_or_else(|p| p.into_inner()).observe(
                        &self.config().name,
                        dlq.name(),
                        depth,
                        newest.as_deref(),
                    );
                }
            }
            let oldest = self.oldest_received_ms.swap(u64::MAX, Ordering::AcqRel);
            let age = if oldest == u64::MAX {
                0
            } else {
                (unix_now().as_millis() as u64).saturating_sub(oldest) / 1000
            };
            self.metrics.oldest_received_age.set(age as i64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = self.stop.cancelled() => break,
            }
        }
    }
}
