//! The last hours of each binding a minute at a time, for the console's
//! charts: messages done, retried and dead-lettered, and handle-duration
//! percentiles. A bounded ring: [`MINUTES`] minutes per binding, older ones
//! dropped; each minute holds three counts and a log-scale histogram.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Minutes kept per binding: six hours.
pub const MINUTES: usize = 360;
/// Histogram buckets, log-scale from 100 µs up to 10 minutes.
const BUCKETS: usize = 48;
const SMALLEST: f64 = 1e-4;
const LARGEST: f64 = 600.0;

/// Every binding's timeline, by binding name.
#[derive(Clone, Default)]
pub struct Timelines {
    lines: Arc<Mutex<BTreeMap<String, Arc<Timeline>>>>,
}

impl Timelines {
    /// Binding `name`'s timeline, made if it has none yet.
    pub fn binding(&self, name: &str) -> Arc<Timeline> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

/// What happened to a message, as the timeline counts it.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Done,
    Retried,
    DeadLettered,
}

#[derive(Clone)]
struct Minute {
    /// Minutes since the Unix epoch.
    at: u64,
    done: u32,
    retried: u32,
    dead_lettered: u32,
    durations: [u32; BUCKETS],
}

impl Minute {
    fn new(at: u64) -> Self {
        Minute {
            at,
            done: 0,
            retried: 0,
            dead_lettered: 0,
            durations: [0; BUCKETS],
        }
    }

    /// The duration below which a share `q` of this minute's messages
    /// took; the upper edge of the bucket it falls in.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.durations.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let wanted = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.durations.iter().enumerate() {
            seen += u64::from(n);
            if seen >= wanted {
                return Some(upper_edge(i));
            }
        }
        Some(LARGEST)
    }
}

fn factor() -> f64 {
    (LARGEST / SMALLEST).powf(1.0 / (BUCKETS - 1) as f64)
}

fn upper_edge(bucket: usize) -> f64 {
    SMALLEST * factor().powi(bucket as i32)
}

fn bucket_of(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= SMALLEST {
        return 0;
    }
    let i = ((seconds / SMALLEST).ln() / factor().ln()).ceil();
    (i as usize).min(BUCKETS - 1)
}

/// One binding's last hours.
#[derive(Default)]
pub struct Timeline {
    minutes: Mutex<VecDeque<Minute>>,
}

/// A timeline as the charts draw it: one entry per minute, oldest first,
/// minutes without messages included; at least the last hour.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct Series {
    /// Each minute's start, in Unix seconds.
    pub at: Vec<u64>,
    pub done: Vec<u32>,
    pub retried: Vec<u32>,
    pub dead_lettered: Vec<u32>,
    /// Handle-duration percentiles in seconds; `None` for a minute without
    /// messages.
    pub p50: Vec<Option<f64>>,
    pub p95: Vec<Option<f64>>,
    pub p99: Vec<Option<f64>>,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
}

impl Timeline {
    fn with_minute(&self, at: u64, change: impl FnOnce(&mut Minute)) {
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        if minutes.back().is_none_or(|last| last.at < at) {
            minutes.push_back(Minute::new(at));
        }
        while minutes
            .front()
            .is_some_and(|first| first.at + MINUTES as u64 <= at)
        {
            minutes.pop_front();
        }
        if let Some(last) = minutes.back_mut() {
            change(last);
        }
    }

    /// Counts one message's end.
    pub fn count(&self, event: Event) {
        self.count_at(minute_now(), event);
    }

    fn count_at(&self, at: u64, event: Event) {
        self.with_minute(at, |m| match event {
            Event::Done => m.done += 1,
            Event::Retried => m.retried += 1,
            Event::DeadLettered => m.dead_lettered += 1,
        });
    }

    /// Notes how long one message's processor ran.
    pub fn observe(&self, took: Duration) {
        self.observe_at(minute_now(), took);
    }

    fn observe_at(&self, at: u64, took: Duration) {
        let bucket = bucket_of(took.as_secs_f64());
        self.with_minute(at, |m| m.durations[bucket] += 1);
    }

    /// The last [`MINUTES`] minutes up to now.
    pub fn series(&self) -> Series {
        self.series_at(minute_now())
    }

    fn series_at(&self, now: u64) -> Series {
        let minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let mut series = Series::default();
        let hour_ago = (now + 1).saturating_sub(60);
        let start = minutes
            .front()
            .map_or(hour_ago, |m| m.at.min(hour_ago))
            .max((now + 1).saturating_sub(MINUTES as u64));
        let mut kept = minutes.iter().peekable();
        for at in start..=now {
            while kept.peek().is_some_and(|m| m.at < at) {
                kept.next();
            }
            let empty = Minute::new(at);
            let minute = match kept.peek() {
                Some(m) if m.at == at => *m,
                _ => &empty,
            };
            series.at.push(at * 60);
            series.done.push(minute.done);
            series.retried.push(minute.retried);
            series.dead_lettered.push(minute.dead_lettered);
            series.p50.push(minute.quantile(0.50));
            series.p95.push(minute.quantile(0.95));
            series.p99.push(minute.quantile(0.99));
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_counted_gaps_filled_and_old_ones_dropped() {
        let line = Timeline::default();
        line.count_at(100, Event::Done);
        line.count_at(100, Event::Done);
        line.count_at(102, Event::Retried);
        line.count_at(102, Event::DeadLettered);
        let series = line.series_at(103);
        // The last hour at least, the minutes without messages as zeros.
        assert_eq!(series.at.len(), 60);
        assert_eq!(series.at[56..], [6000, 6060, 6120, 6180]);
        assert_eq!(series.done[56..], [2, 0, 0, 0]);
        assert_eq!(series.retried[56..], [0, 0, 1, 0]);
        assert_eq!(series.dead_lettered[56..], [0, 0, 1, 0]);
        assert_eq!(series.done[..56].iter().sum::<u32>(), 0);
        // Minutes within six hours stay; older ones go.
        line.count_at(100 + MINUTES as u64 - 1, Event::Done);
        let series = line.series_at(100 + MINUTES as u64 - 1);
        assert_eq!(series.at.len(), MINUTES);
        assert_eq!(series.done.iter().sum::<u32>(), 3);
        line.count_at(100 + MINUTES as u64 + 5, Event::Done);
        let series = line.series_at(100 + MINUTES as u64 + 5);
        assert_eq!(series.done.iter().sum::<u32>(), 2);
        assert!(line.minutes.lock().unwrap().iter().all(|m| m.at > 105));
    }

    #[test]
    fn percentiles_come_from_the_histogram_within_a_bucket() {
        let line = Timeline::default();
        for ms in 1..=100u64 {
            line.observe_at(7, Duration::from_millis(ms));
        }
        let series = line.series_at(7);
        let p50 = series.p50[7].unwrap();
        let p99 = series.p99[7].unwrap();
        // Each bucket spans a factor of about 1.39.
        assert!((0.050..0.050 * 1.4).contains(&p50), "{p50}");
        assert!((0.099..0.099 * 1.4).contains(&p99), "{p99}");
        let empty = Timeline::default().series_at(100);
        assert_eq!(empty.at.len(), 60);
        assert!(empty.p50.iter().all(Option::is_none));
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
    }
}
