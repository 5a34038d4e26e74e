//! A simulated phone's outbox: the sends it has made and not yet seen acknowledged.
//!
//! Answers come back out of band, and a connection that drops takes its unanswered requests with
//! it: some reached the server, some never left the socket. A phone that then sent only the *new*
//! messages on its next connection and retried the lost ones when their failures trickled in would
//! put a later message ahead of an earlier one, and the oracle would rightly call that reordering.
//! So, as a phone's outbox does, everything unacknowledged is sent again on the next connection,
//! in the order it was first sent, before anything new (the server keeps one copy per
//! `client_msg_id`). Each send is tagged with the connection it went out on, so that the failure of
//! a send that has since been resent is not retried twice.

use std::collections::BTreeMap;

/// One send: the room, its number in that room (0, 1, 2, ...), and when it was meant to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    pub room: u64,
    pub number: u64,
    pub intended_us: u64,
}

/// What to make of an answer to a send.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Acknowledged for the first time: count it.
    Acked(Send),
    /// Failed on the connection it last went out on: retry it or give it up.
    Failed(Send),
    /// Already acknowledged, or resent since: nothing to do.
    Stale,
}

#[derive(Default)]
pub struct Outbox {
    /// Keyed (room, number), so resending walks each room in number order.
    pending: BTreeMap<(u64, u64), (u64, u64)>,
    /// The current connection's generation; bumped on every reconnect.
    connection: u64,
}

impl Outbox {
    /// Records that `send` went out on the current connection; returns the tag its answer carries.
    pub fn sent(&mut self, send: Send) -> u64 {
        self.pending.insert((send.room, send.number), (send.intended_us, self.connection));
        self.connection
    }

    /// A new connection: every send still pending goes out again, in order, before anything new.
    pub fn reconnected(&mut self) -> Vec<Send> {
        self.connection += 1;
        self.pending.iter().map(|(&(room, number), &(intended_us, _))| Send { room, number, intended_us }).collect()
    }

    /// The answer to the send `(room, number)` made on connection `tag`.
    pub fn answered(&mut self, room: u64, number: u64, tag: u64, ok: bool) -> Answer {
        let Some(&(intended_us, last_tag)) = self.pending.get(&(room, number)) else {
            return Answer::Stale;
        };
        let send = Send { room, number, intended_us };
        if ok {
            self.pending.remove(&(room, number));
            Answer::Acked(send)
        } else if tag == last_tag {
            Answer::Failed(send)
        } else {
            Answer::Stale
        }
    }

    /// Stops waiting for a send that failed (the run is over).
    pub fn give_up(&mut self, send: Send) {
        self.pending.remove(&(send.room, send.number));
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(room: u64, number: u64) -> Send {
        Send { room, number, intended_us: number * 10 }
    }

    #[test]
    fn a_reconnect_resends_what_is_pending_in_order_and_ignores_the_old_connections_failures() {
        let mut outbox = Outbox::default();
        let old: Vec<u64> = [send(1, 0), send(1, 1), send(2, 0)].into_iter().map(|s| outbox.sent(s)).collect();
        assert_eq!(outbox.answered(1, 0, old[0], true), Answer::Acked(send(1, 0)));

        let resend = outbox.reconnected();
        assert_eq!(resend, vec![send(1, 1), send(2, 0)]);
        let new: Vec<u64> = resend.iter().map(|&s| outbox.sent(s)).collect();
        // The dropped connection's failures arrive late: already resent, so not retried again.
        assert_eq!(outbox.answered(1, 1, old[1], false), Answer::Stale);
        assert_eq!(outbox.answered(2, 0, old[2], false), Answer::Stale);
        // An acknowledgement is counted once, whichever connection's answer brings it.
        assert_eq!(outbox.answered(1, 1, old[1], true), Answer::Acked(send(1, 1)));
        assert_eq!(outbox.answered(1, 1, new[0], true), Answer::Stale);
        // A failure on the connection a send last went out on is for the caller to decide.
        assert_eq!(outbox.answered(2, 0, new[1], false), Answer::Failed(send(2, 0)));
        assert!(!outbox.is_empty());
        outbox.give_up(send(2, 0));
        assert!(outbox.is_empty());
    }

    #[test]
    fn acknowledging_an_already_settled_send_is_stale() {
        let mut outbox = Outbox::default();
        let tag = outbox.sent(send(1, 0));
        assert_eq!(outbox.answered(1, 0, tag, true), Answer::Acked(send(1, 0)));
        assert_eq!(outbox.answered(1, 0, tag, true), Answer::Stale);
        assert_eq!(outbox.answered(1, 0, tag, false), Answer::Stale);
    }
}
