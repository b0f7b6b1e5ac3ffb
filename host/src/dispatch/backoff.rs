//! Retry delays: exponential in the receive count, capped, with jitter so
//! that messages which failed together do not all return together.

use std::time::Duration;

/// `base * 2^(n-1)`, capped at `cap`, less up to `jitter` of itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// The share of each delay that is random, 0.0–1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(15 * 60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before receive number `receive_count + 1`, given a random
    /// number in [0, 1).
    pub fn delay_with(&self, receive_count: u32, random: f64) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(32);
        let full = self
            .base
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.cap);
        full.mul_f64(1.0 - self.jitter * random.clamp(0.0, 1.0))
    }

    /// The delay before the next attempt, with fresh jitter.
    pub fn delay(&self, receive_count: u32) -> Duration {
        self.delay_with(receive_count, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_receive_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff.delay_with(n, 0.5).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff.delay_with(1000, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_its_share() {
        let backoff = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(100),
            jitter: 0.2,
        };
        assert_eq!(backoff.delay_with(1, 0.0), Duration::from_secs(10));
        assert_eq!(backoff.delay_with(1, 1.0), Duration::from_secs(8));
        for _ in 0..100 {
            let d = backoff.delay(2);
            assert!(
                d > Duration::from_secs(16) && d <= Duration::from_secs(20),
                "{d:?}"
            );
        }
    }
}
