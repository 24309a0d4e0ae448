//! Injected time: the [`Clock`] trait and its two implementations.
//!
//! Nothing in this crate reads the system time on its own. State machines take
//! an `Instant` argument (`now`), and the few types that need to read time
//! themselves ([`NodeCounters`](crate::NodeCounters)) hold a [`SharedClock`].
//! Production code uses [`SystemClock`]; tests use [`ManualClock`] and move
//! time forward explicitly, so no test ever sleeps. (`cluster-health` adds a
//! tokio clock that follows `tokio::time::pause()`.)

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A source of monotonic time.
///
/// Implementations must be cheap to call (the request hot path reads the
/// clock) and must never go backwards.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// A clock shared between components: `Arc<dyn Clock>`.
///
/// Build one with `Arc::new(SystemClock)` or `Arc::new(manual_clock.clone())`,
/// or use [`system_clock`].
pub type SharedClock = Arc<dyn Clock>;

/// Returns a [`SharedClock`] backed by [`SystemClock`].
#[must_use]
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// The real monotonic clock, [`Instant::now`].
///
/// It has no state; `SystemClock::default()` is the same as `SystemClock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests and simulations.
///
/// Clones share the same time: advancing one clone advances all of them, so a
/// test can keep one handle and give another (as a [`SharedClock`]) to the code
/// under test. It starts at the real `Instant::now()` taken when
/// [`ManualClock::new`] (or `default()`) is called, because `Instant` has no
/// fixed origin; after that it only moves through [`advance`](Self::advance)
/// and [`set`](Self::set).
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A manual clock frozen at the current real instant.
    #[must_use]
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// A manual clock frozen at `start`.
    #[must_use]
    pub fn starting_at(start: Instant) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }

    /// Sets the clock (and every clone of it) to `to`.
    ///
    /// Moving backwards is allowed here, for tests that exercise clock skew;
    /// the types in this crate treat an instant earlier than a recorded one as
    /// "no time elapsed".
    pub fn set(&self, to: Instant) {
        *self.now.lock() = to;
    }

    /// A [`SharedClock`] that shares this clock's time.
    #[must_use]
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Default for ManualClock {
    /// Same as [`ManualClock::new`]: frozen at the current real instant.
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &*self.now.lock())
            .finish()
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> Instant {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new();
        let start = clock.now();
        let other = clock.clone();
        let shared = clock.shared();
        other.advance(Duration::from_secs(3));
        assert_eq!(clock.now(), start + Duration::from_secs(3));
        assert_eq!(shared.now(), start + Duration::from_secs(3));
        clock.set(start);
        assert_eq!(other.now(), start);
        assert_eq!(shared.now(), start);
    }

    #[test]
    fn manual_clock_does_not_move_by_itself() {
        let clock = ManualClock::default();
        let a = clock.now();
        let b = clock.now();
        assert_eq!(a, b);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = system_clock();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
