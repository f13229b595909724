//! `mq_notify`: registration and delivery.

use crate::engine::{Guard, Queue};
use std::sync::atomic::Ordering::Relaxed;

/// A notification decided under the lock, sent after it is released.
pub struct Pending;

/// Under the lock, right after a message landed in an empty queue: whether a
/// registration must fire now.
pub(crate) fn should_fire(_g: &Guard<'_>, q: &Queue) -> Option<Pending> {
    if q.region().header().notify.pid.load(Relaxed) == 0 {
        return None;
    }
    None
}

/// Sends a notification decided by [`should_fire`].
pub(crate) fn fire(_p: Pending) {}
