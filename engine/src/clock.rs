//! The one source of the current time for the engine's decisions: when a
//! commit landed, a retention cutoff, an export's `trace_idle` window, a
//! lease's expiry, the times written into runs and the registry, BTQL's
//! `now()`.
//!
//! A [`Store`](crate::store::Store) carries a [`Clock`] and hands it to what
//! it opens; a [`StateDb`](crate::state::StateDb) takes its store's with
//! `with_clock`. Tests drive time with [`Clock::manual`] instead of sleeping.
//! Only what has to agree with the world's clock reads the system's:
//! credential expiry (AWS compares it with its own), and durations measured
//! with `Instant`.
//!
//! With the `test-hooks` feature (test builds only), [`Clock::system`] adds
//! the milliseconds written in the file named by `SPANLAKE_TEST_CLOCK`, so
//! a test moves every process of a store forward in time together (the CLI
//! and a server it spawns) without waiting.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A source of the current time; cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn TimeSource>);

trait TimeSource: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

struct System;

impl TimeSource for System {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A time that moves only when told to (see [`Clock::manual`]).
#[derive(Debug, Clone)]
pub struct ManualTime(Arc<Mutex<DateTime<Utc>>>);

impl ManualTime {
    /// Move the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }

    /// Set the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }
}

impl TimeSource for ManualTime {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock {
    /// The system's clock (in test builds, shifted by `SPANLAKE_TEST_CLOCK`).
    pub fn system() -> Self {
        #[cfg(feature = "test-hooks")]
        if let Some(path) = std::env::var_os("SPANLAKE_TEST_CLOCK") {
            return Self(Arc::new(Shifted(path.into())));
        }
        Self(Arc::new(System))
    }

    /// A clock that stands at `start` until its [`ManualTime`] moves it.
    pub fn manual(start: DateTime<Utc>) -> (Self, ManualTime) {
        let time = ManualTime(Arc::new(Mutex::new(start)));
        (Self(Arc::new(time.clone())), time)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }

    /// Microseconds since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        self.now().timestamp_micros()
    }

    /// RFC 3339 with microseconds and `Z`, as runs and the registry store
    /// their times.
    pub fn now_rfc3339(&self) -> String {
        self.now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now_rfc3339())
    }
}

/// The system clock plus the milliseconds in a file (absent or unreadable:
/// no shift), read at every call.
#[cfg(feature = "test-hooks")]
struct Shifted(std::path::PathBuf);

#[cfg(feature = "test-hooks")]
impl TimeSource for Shifted {
    fn now(&self) -> DateTime<Utc> {
        let shift = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .unwrap_or(0);
        Utc::now() + chrono::Duration::milliseconds(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let (clock, time) = Clock::manual(start);
        assert_eq!(clock.now(), start);
        let copy = clock.clone();
        time.advance(std::time::Duration::from_secs(90));
        assert_eq!(copy.now_rfc3339(), "2026-01-02T03:05:35.000000Z");
        time.set(start);
        assert_eq!(clock.now_micros(), start.timestamp_micros());
    }
}
