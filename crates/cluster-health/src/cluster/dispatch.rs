//! The event queue: events are queued under the node's state lock (so a
//! node's events keep the order of its changes) and dispatched afterwards,
//! on the thread that caused them, to the callbacks and the broadcast
//! channel, with no lock held while a callback runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use super::events::HealthEvent;
use super::shared::Shared;

impl Shared {
    pub(super) fn push(&self, event: HealthEvent) {
        self.queue.lock().push_back(event);
    }

    /// Dispatches queued events to the channel and the callbacks, in order,
    /// on this thread, with no lock held while a callback runs. Only one
    /// thread drains at a time; a callback that causes events (re-entrantly)
    /// finds the drain running and leaves them to it.
    pub(super) fn drain(&self) {
        loop {
            if self
                .draining
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            loop {
                let Some(event) = self.queue.lock().pop_front() else {
                    break;
                };
                self.dispatch(&event);
                // No receivers is fine: events are optional.
                let _ = self.events.send(event);
            }
            self.draining.store(false, Ordering::Release);
            if self.queue.lock().is_empty() {
                return;
            }
        }
    }

    pub(super) fn dispatch(&self, event: &HealthEvent) {
        match event {
            HealthEvent::StatusChanged(change) => {
                for callback in &self.on_status_change {
                    if catch_unwind(AssertUnwindSafe(|| callback(change))).is_err() {
                        tracing::error!(node = %change.node, "on_status_change callback panicked; ignored");
                    }
                }
            }
            HealthEvent::CheckCompleted(report) => {
                for callback in &self.on_health_check {
                    if catch_unwind(AssertUnwindSafe(|| callback(report))).is_err() {
                        tracing::error!(node = %report.node, "on_health_check callback panicked; ignored");
                    }
                }
            }
            _ => {}
        }
    }
}
