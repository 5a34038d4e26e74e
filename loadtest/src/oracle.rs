//! The correctness oracle: every message a simulated phone sends is tracked to every device that
//! should receive it. Each sender numbers its messages to each room 0, 1, 2, ... (in the text);
//! each receiving device checks, per (room, sender), that numbers arrive exactly once and in order.
//! At the end, what each device got is compared with what each sender had acknowledged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Holes remembered per stream; past this, late arrivals count as duplicates (a run that far off
/// has failed anyway).
const MAX_HOLES: usize = 100_000;

/// What one device saw of one (room, sender) pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamLog {
    /// One past the highest number seen.
    pub next: u64,
    pub delivered: u64,
    pub duplicates: u64,
    /// Arrivals that filled a hole: they came after a later number.
    pub out_of_order: u64,
    /// Numbers skipped so far (not yet arrived); never sent between processes.
    #[serde(skip)]
    holes: std::collections::BTreeSet<u64>,
}

impl StreamLog {
    pub fn record(&mut self, number: u64) {
        if number >= self.next {
            for hole in self.next..number {
                if self.holes.len() < MAX_HOLES {
                    self.holes.insert(hole);
                }
            }
            self.next = number + 1;
            self.delivered += 1;
        } else if self.holes.remove(&number) {
            self.delivered += 1;
            self.out_of_order += 1;
        } else {
            self.duplicates += 1;
        }
    }
}

/// Key: (room id, sender user id).
pub type DeviceLog = BTreeMap<(u64, u64), StreamLog>;

/// What the senders report: how many messages each acknowledged per room.
pub type SentLog = BTreeMap<(u64, u64), u64>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// Compares what each device should have received (every message acknowledged in each of its
/// rooms) with what it did.
pub fn judge<'a>(sent: &SentLog, devices: impl IntoIterator<Item = (&'a [u64], &'a DeviceLog)>) -> Verdict {
    let mut v = Verdict::default();
    for (rooms, log) in devices {
        for (&(room, sender), &count) in sent.iter().filter(|((room, _), _)| rooms.contains(room)) {
            v.expected += count;
            let seen = log.get(&(room, sender)).cloned().unwrap_or_default();
            v.delivered += seen.delivered.min(count);
            v.lost += count.saturating_sub(seen.delivered);
            v.duplicated += seen.duplicates;
            v.out_of_order += seen.out_of_order;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(records: &[(u64, u64, u64)]) -> DeviceLog {
        let mut log = DeviceLog::new();
        for &(room, sender, n) in records {
            log.entry((room, sender)).or_default().record(n);
        }
        log
    }

    #[test]
    fn a_perfect_run_passes() {
        let sent = SentLog::from([((1, 10), 3), ((2, 20), 1)]);
        let a = device(&[(1, 10, 0), (1, 10, 1), (1, 10, 2)]);
        let b = device(&[(1, 10, 0), (2, 20, 0), (1, 10, 1), (1, 10, 2)]);
        let v = judge(&sent, [(&[1u64][..], &a), (&[1u64, 2][..], &b)]);
        assert_eq!(v, Verdict { expected: 7, delivered: 7, ..Default::default() });
        assert!(v.ok());
    }

    #[test]
    fn loss_duplicates_and_reorders_are_caught() {
        let sent = SentLog::from([((1, 10), 3)]);
        let lost = device(&[(1, 10, 0), (1, 10, 1)]);
        let v = judge(&sent, [(&[1u64][..], &lost)]);
        assert_eq!((v.lost, v.ok()), (1, false));
        let dup = device(&[(1, 10, 0), (1, 10, 1), (1, 10, 1), (1, 10, 2)]);
        assert_eq!(judge(&sent, [(&[1u64][..], &dup)]).duplicated, 1);
        let swapped = device(&[(1, 10, 0), (1, 10, 2), (1, 10, 1)]);
        let v = judge(&sent, [(&[1u64][..], &swapped)]);
        assert_eq!((v.out_of_order, v.duplicated, v.lost, v.ok()), (1, 0, 0, false));
    }
}
