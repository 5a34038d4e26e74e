//! Which rows of a fenced log count. A room's log and a user's stream each have one writer at a
//! time, under an epoch taken by a lightweight transaction; every row carries its writer's epoch.
//! A new writer records where it starts (after the last row it could see); a row of an older epoch
//! at or past that start was never acknowledged (its writer's check of the epoch failed), so
//! readers skip it, and the new writer's row at the same place is the one that counts.

/// The starts of a log's epochs: `(epoch, start)` for each claim, in epoch order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Claims(Vec<(u64, u64)>);

impl Claims {
    pub(super) fn new(mut starts: Vec<(u64, u64)>) -> Self {
        starts.sort_unstable();
        Self(starts)
    }

    /// Records a new claim (the newest).
    pub(super) fn push(&mut self, epoch: u64, start: u64) {
        self.0.retain(|&(e, _)| e != epoch);
        self.0.push((epoch, start));
        self.0.sort_unstable();
    }

    /// Whether the row at `place` written under `epoch` counts: no later epoch starts at or before it.
    pub(super) fn counts(&self, epoch: u64, place: u64) -> bool {
        self.0.iter().filter(|&&(e, _)| e > epoch).all(|&(_, start)| place < start)
    }

    /// Where `epoch`'s writer started (0 when it recorded no claim: the creator's rows, epoch 0).
    pub(super) fn start_of(&self, epoch: u64) -> u64 {
        self.0.iter().find(|&&(e, _)| e == epoch).map_or(0, |&(_, start)| start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_past_a_newer_writers_start_do_not_count() {
        // Epoch 1 started at 2, epoch 2 at 5 (it saw rows up to 4), epoch 3 at 9.
        let claims = Claims::new(vec![(2, 5), (1, 2), (3, 9)]);
        assert!(claims.counts(0, 1), "the creator's row before every start");
        assert!(claims.counts(1, 4));
        assert!(!claims.counts(1, 5), "epoch 1 wrote 5 after epoch 2 started there");
        assert!(claims.counts(2, 8));
        assert!(!claims.counts(2, 9));
        assert!(claims.counts(3, 1_000), "the newest epoch's rows all count");
        assert_eq!((claims.start_of(2), claims.start_of(7)), (5, 0));
    }
}
