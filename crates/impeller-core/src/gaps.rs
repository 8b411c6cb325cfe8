//! The missing-value policy, applied identically in training and scoring.
//!
//! Policy (documented in docs/ARCHITECTURE.md):
//! - A reading that is missing or not a finite number is replaced by the channel's last good
//!   reading, at most [`GapPolicy::max_carry_forward`] frames in a row.
//! - Beyond that the frame is *unscorable*: it is reported as such, is not scored and does not
//!   enter the rolling windows; the other channels' good values still refresh their last-good
//!   values.
//! - A frame whose timestamp is older than the previous frame's is *out of order*: it is reported
//!   and ignored entirely.
//! - When more than [`GapPolicy::max_time_gap_ms`] pass between two frames, the rolling windows
//!   restart (features computed across an outage would mix two different situations) and no value
//!   is carried across the gap.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapPolicy {
    /// How many frames in a row a missing or non-finite reading may be replaced by the channel's
    /// last good reading before the frame is flagged unscorable.
    pub max_carry_forward: u32,
    /// A pause between two frames longer than this (milliseconds) restarts the rolling windows.
    /// Absent or null: never restart.
    pub max_time_gap_ms: Option<u64>,
}

impl Default for GapPolicy {
    fn default() -> Self {
        Self { max_carry_forward: 3, max_time_gap_ms: None }
    }
}

/// What the gap filler made of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Every value is usable (some may have been carried forward).
    Complete { restart: bool },
    /// The frame cannot be scored: `channel` (index) has had no good reading for too long.
    Unscorable { channel: usize, restart: bool },
    /// The timestamp went backwards; the frame was ignored.
    OutOfOrder,
}

/// Streaming state of the gap policy for one device.
#[derive(Debug, Clone)]
pub struct GapFiller {
    policy: GapPolicy,
    last_good: Vec<f64>,
    carried: Vec<u32>,
    last_ts: Option<i64>,
}

impl GapFiller {
    pub fn new(policy: GapPolicy, channels: usize) -> Self {
        Self { policy, last_good: vec![f64::NAN; channels], carried: vec![0; channels], last_ts: None }
    }

    /// Fills `out` from `values` (same length as the channel list) following the policy.
    pub fn fill(&mut self, ts_ms: i64, values: &[f64], out: &mut [f64]) -> Filled {
        debug_assert_eq!(values.len(), self.last_good.len());
        let mut restart = false;
        if let Some(prev) = self.last_ts {
            if ts_ms < prev {
                return Filled::OutOfOrder;
            }
            if let Some(max_gap) = self.policy.max_time_gap_ms
                && ts_ms.abs_diff(prev) > max_gap
            {
                restart = true;
                self.last_good.fill(f64::NAN);
            }
        }
        self.last_ts = Some(ts_ms);
        let mut unscorable = None;
        for (c, (&v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
            if v.is_finite() {
                *o = v;
                self.last_good[c] = v;
                self.carried[c] = 0;
            } else if self.last_good[c].is_finite() && self.carried[c] < self.policy.max_carry_forward {
                *o = self.last_good[c];
                self.carried[c] += 1;
            } else {
                *o = f64::NAN;
                unscorable.get_or_insert(c);
            }
        }
        match unscorable {
            Some(channel) => Filled::Unscorable { channel, restart },
            None => Filled::Complete { restart },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_forward_up_to_the_limit_then_flags() {
        let mut g = GapFiller::new(GapPolicy { max_carry_forward: 2, max_time_gap_ms: None }, 2);
        let mut out = [0.0; 2];
        assert_eq!(g.fill(0, &[1.0, 2.0], &mut out), Filled::Complete { restart: false });
        assert_eq!(g.fill(1, &[f64::NAN, 3.0], &mut out), Filled::Complete { restart: false });
        assert_eq!(out, [1.0, 3.0]);
        assert_eq!(g.fill(2, &[f64::INFINITY, 3.0], &mut out), Filled::Complete { restart: false });
        assert_eq!(g.fill(3, &[f64::NAN, 3.0], &mut out), Filled::Unscorable { channel: 0, restart: false });
        // A good value resets the count.
        assert_eq!(g.fill(4, &[5.0, f64::NAN], &mut out), Filled::Complete { restart: false });
        assert_eq!(out, [5.0, 3.0]);
    }

    #[test]
    fn a_channel_missing_from_the_start_is_unscorable() {
        let mut g = GapFiller::new(GapPolicy::default(), 2);
        let mut out = [0.0; 2];
        assert_eq!(g.fill(0, &[1.0, f64::NAN], &mut out), Filled::Unscorable { channel: 1, restart: false });
    }

    #[test]
    fn out_of_order_frames_are_ignored_and_long_pauses_restart() {
        let policy = GapPolicy { max_carry_forward: 5, max_time_gap_ms: Some(10_000) };
        let mut g = GapFiller::new(policy, 1);
        let mut out = [0.0; 1];
        g.fill(100_000, &[1.0], &mut out);
        assert_eq!(g.fill(99_000, &[2.0], &mut out), Filled::OutOfOrder);
        assert_eq!(g.fill(105_000, &[2.0], &mut out), Filled::Complete { restart: false });
        // After a pause of 20 s no value is carried across it.
        assert_eq!(g.fill(125_000, &[f64::NAN], &mut out), Filled::Unscorable { channel: 0, restart: true });
    }
}
