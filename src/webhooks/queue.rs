//! The webhook queue: this node's own SQLite file, so that an event waits for the backend across
//! restarts whichever store the node uses. One connection, used off the async threads.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// A queued event.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub rowid: i64,
    /// Random, the same on every attempt: the backend de-duplicates on it.
    pub delivery_id: String,
    pub kind: String,
    /// `{"type": ..., "data": ...}`.
    pub event: String,
    pub at_ms: i64,
    pub attempts: u32,
}

const PENDING: i64 = 0;
const FAILED: i64 = 1;

pub(super) struct Queue {
    conn: Mutex<Connection>,
}

impl Queue {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A crash of the process loses nothing committed; a power cut may lose the last moments.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS webhook_jobs (
                 delivery_id TEXT NOT NULL UNIQUE,
                 kind TEXT NOT NULL,
                 event TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 state INTEGER NOT NULL,
                 due_ms INTEGER NOT NULL,
                 attempts INTEGER NOT NULL,
                 last_error TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS webhook_jobs_due ON webhook_jobs (state, due_ms);",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    /// Queues events (`kind`, event JSON, when), due now, in one transaction.
    pub fn push(&self, events: &[(String, String, i64)]) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock().expect("the queue's lock");
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO webhook_jobs (delivery_id, kind, event, at_ms, state, due_ms, attempts, last_error)
                 VALUES (?1, ?2, ?3, ?4, 0, ?4, 0, '')",
            )?;
            for (kind, event, at_ms) in events {
                insert.execute(params![format!("{:032x}", rand::random::<u128>()), kind, event, at_ms])?;
            }
        }
        tx.commit()
    }

    /// Pending jobs due by `now_ms`, oldest first.
    pub fn due(&self, now_ms: i64, limit: usize) -> rusqlite::Result<Vec<Job>> {
        let conn = self.conn.lock().expect("the queue's lock");
        let mut select = conn.prepare_cached(
            "SELECT rowid, delivery_id, kind, event, at_ms, attempts FROM webhook_jobs
             WHERE state = 0 AND due_ms <= ?1 ORDER BY due_ms, rowid LIMIT ?2",
        )?;
        select
            .query_map(params![now_ms, limit as i64], |r| {
                Ok(Job {
                    rowid: r.get(0)?,
                    delivery_id: r.get(1)?,
                    kind: r.get(2)?,
                    event: r.get(3)?,
                    at_ms: r.get(4)?,
                    attempts: r.get::<_, i64>(5)? as u32,
                })
            })?
            .collect()
    }

    /// When the next pending job falls due.
    pub fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        let conn = self.conn.lock().expect("the queue's lock");
        conn.prepare_cached("SELECT min(due_ms) FROM webhook_jobs WHERE state = 0")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    }

    pub fn delivered(&self, job: &Job) -> rusqlite::Result<()> {
        let conn = self.conn.lock().expect("the queue's lock");
        conn.prepare_cached("DELETE FROM webhook_jobs WHERE rowid = ?1")?.execute([job.rowid])?;
        Ok(())
    }

    /// Tried again at `due_ms`, or (`due_ms` None) given up and kept, with the error.
    pub fn failed_attempt(&self, job: &Job, due_ms: Option<i64>, error: &str) -> rusqlite::Result<()> {
        let conn = self.conn.lock().expect("the queue's lock");
        let (state, due) = match due_ms {
            Some(due) => (PENDING, due),
            None => (FAILED, 0),
        };
        conn.prepare_cached(
            "UPDATE webhook_jobs SET state = ?2, due_ms = ?3, attempts = attempts + 1, last_error = ?4 WHERE rowid = ?1",
        )?
        .execute(params![job.rowid, state, due, error])?;
        Ok(())
    }

    /// Pending and given-up jobs.
    pub fn counts(&self) -> rusqlite::Result<(u64, u64)> {
        let conn = self.conn.lock().expect("the queue's lock");
        let count = |state: i64| {
            conn.prepare_cached("SELECT count(*) FROM webhook_jobs WHERE state = ?1")?
                .query_row([state], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        };
        Ok((count(PENDING)?, count(FAILED)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_due_retried_given_up_and_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&dir.path().join("w.db")).unwrap();
        queue.push(&[("a".into(), "{}".into(), 10), ("b".into(), "{}".into(), 20)]).unwrap();
        assert_eq!(queue.next_due().unwrap(), Some(10));
        let due = queue.due(15, 10).unwrap();
        assert_eq!(due.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["a"]);
        queue.failed_attempt(&due[0], Some(100), "503").unwrap();
        let due = queue.due(50, 10).unwrap();
        assert_eq!(due.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["b"]);
        queue.delivered(&due[0]).unwrap();
        let retried = queue.due(100, 10).unwrap();
        assert_eq!((retried.len(), retried[0].attempts), (1, 1));
        queue.failed_attempt(&retried[0], None, "gone").unwrap();
        assert!(queue.due(1_000, 10).unwrap().is_empty());
        assert_eq!(queue.counts().unwrap(), (0, 1));
    }
}
