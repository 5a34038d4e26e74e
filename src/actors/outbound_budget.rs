//! The bytes of stream events queued for one connection and not yet handed to its socket, capped.
//!
//! The connection's queue is bounded in items too, but an item may be a page of hundreds of
//! events or a message of kilobytes: counting bytes is what keeps a client that stops reading
//! cheap. The user actor adds what it queues (`try_add`); the connection task takes off what it
//! has written (`written`). When an event does not fit, the connection falls behind and catches
//! up from the store at its own pace, as it does when the queue is full of items.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::{EntryBody, StreamEvent};
use crate::metrics::METRICS;

pub struct OutboundBudget {
    queued: AtomicUsize,
    cap: usize,
}

impl OutboundBudget {
    pub fn new(cap: usize) -> Self {
        Self { queued: AtomicUsize::new(0), cap }
    }

    /// Counts `bytes` as queued, if they fit under the cap. An empty queue takes anything (one
    /// event larger than the cap must still go out).
    pub fn try_add(&self, bytes: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + bytes <= self.cap).then_some(queued + bytes)
            })
            .inspect(|_| METRICS.outbound_queued_bytes.add(bytes as i64))
            .is_ok()
    }

    /// Room left under the cap (all of it, `usize::MAX`, for an empty queue).
    pub fn room(&self) -> usize {
        match self.queued.load(Ordering::Acquire) {
            0 => usize::MAX,
            queued => self.cap.saturating_sub(queued),
        }
    }

    /// `bytes` counted by `try_add` were written (or dropped).
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        METRICS.outbound_queued_bytes.add(-(bytes as i64));
    }
}

impl Drop for OutboundBudget {
    /// What was still queued when the connection went is not queued any more either.
    fn drop(&mut self) {
        METRICS.outbound_queued_bytes.add(-(*self.queued.get_mut() as i64));
    }
}

/// About how many bytes an event takes queued and on the wire: its texts, and a flat allowance for
/// ids, positions and framing. The same event always counts the same, so what is added is what is
/// taken off.
pub fn event_bytes(event: &StreamEvent) -> usize {
    const FRAMING: usize = 64;
    FRAMING
        + match event {
            StreamEvent::Entry(entry) => match &entry.body {
                EntryBody::Text(message) => message.text.len() + message.client_msg_id.len() + 16 * message.media.len(),
                EntryBody::Edited { text, .. } => text.len(),
                EntryBody::Created { name, members, .. } => name.len() + 8 * members.len(),
                EntryBody::MembersAdded(members) => 8 * members.len(),
                EntryBody::Renamed(name) => name.len(),
                _ => 0,
            },
            StreamEvent::Post { details, .. } => {
                details.as_ref().map_or(0, |p| p.caption.len() + 16 * p.media.len() + 32)
            }
            StreamEvent::Activity(activity) => activity.text.len() + 64,
            StreamEvent::Notification(n) => {
                n.title.len() + n.body.len() + n.data.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>()
            }
            StreamEvent::Receipt(_) => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_except_for_one_event_into_an_empty_queue() {
        let budget = OutboundBudget::new(100);
        assert!(budget.try_add(60));
        assert!(!budget.try_add(60), "over the cap");
        assert_eq!(budget.room(), 40);
        assert!(budget.try_add(40));
        budget.written(100);
        assert_eq!(budget.room(), usize::MAX);
        assert!(budget.try_add(500), "an empty queue takes one large event");
        assert!(!budget.try_add(1));
        budget.written(500);
        assert_eq!(budget.room(), usize::MAX, "empty again");
    }
}
