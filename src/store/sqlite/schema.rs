//! Opening a database file: pragmas, tables and versioned migrations.
//!
//! Tables mirror the partition-friendly layout of the traits: `entries` is keyed by (room, seq),
//! `events` by (user, pos); nothing needs a cross-partition transaction, even though SQLite could
//! give one.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::config::Synchronous;

/// Version 1: every table (`IF NOT EXISTS`, so a database of before versioning gets what it lacks).
/// A later change to the schema is a migration of its own, never an edit here.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    user_id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    refresh_hash BLOB NOT NULL,
    refresh_expires_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
-- The refresh token hash each device traded last: presented again, it gives a theft away.
CREATE TABLE IF NOT EXISTS refresh_previous (
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room_id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS direct_rooms (
    user_lo INTEGER NOT NULL,
    user_hi INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    PRIMARY KEY (user_lo, user_hi)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    room_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    role INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_rooms (
    user_id INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    room_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    id INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    text TEXT NOT NULL DEFAULT '',
    client_msg_id TEXT,
    target_seq INTEGER NOT NULL DEFAULT 0,
    users TEXT NOT NULL DEFAULT '',
    role INTEGER NOT NULL DEFAULT 0,
    edited_at_ms INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_client_msg_id
    ON entries (room_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
-- The epoch of a room's current writer: taking a room over increments it, and an append that
-- carries an older epoch is refused (the fence between an old owner and a new one).
CREATE TABLE IF NOT EXISTS room_owners (
    room_id INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    user_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    actor_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_tokens (
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    platform INTEGER NOT NULL,
    token TEXT NOT NULL,
    app_id TEXT NOT NULL,
    locale TEXT NOT NULL,
    sandbox INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS push_tokens_by_token ON push_tokens (platform, token);
CREATE TABLE IF NOT EXISTS push_prefs (
    user_id INTEGER PRIMARY KEY,
    dnd_until_ms INTEGER NOT NULL DEFAULT 0,
    hide_previews INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS room_mutes (
    user_id INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
-- state: 0 pending (mergeable), 1 claimed (leased until due_ms), 2 failed (kept for inspection).
-- AUTOINCREMENT: a job id is the idempotency key sent to providers and is never reused.
CREATE TABLE IF NOT EXISTS push_jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    platform INTEGER NOT NULL,
    state INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    kind INTEGER NOT NULL,
    count INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_pos INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    many_senders INTEGER NOT NULL DEFAULT 0,
    preview TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS push_jobs_pending ON push_jobs (user_id, device_id, room_id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS push_jobs_due ON push_jobs (due_ms) WHERE state < 2;
CREATE INDEX IF NOT EXISTS push_jobs_by_room ON push_jobs (user_id, room_id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS push_jobs_failed ON push_jobs (due_ms) WHERE state = 2;
";

/// Opens (creating if needed) the database with WAL and the given durability.
pub(super) fn open(path: &Path, synchronous: Synchronous, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // Small pages (for a new file; an existing one keeps its size). Every message dirties one leaf
    // of each recipient's stream, and a commit writes whole pages to the WAL: with 4 KiB pages a
    // 10-member group wrote ~100 KB per message; 1 KiB pages cut that about fourfold.
    conn.pragma_update(None, "page_size", 1024)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Checkpoints run on their own thread (`checkpointer.rs`), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    // The query planner stability guarantee: plans never depend on bound values. Without it, a
    // statement whose plan peeked at a bound `LIMIT ?` or at a value compared with a partial
    // index's condition is parsed and planned again on every run, cache or not (that was a fifth
    // of the server's CPU while draining a push backlog).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// The schema's version (`PRAGMA user_version`) this build writes. A database is brought up to it
/// on open, one migration at a time; one of a newer version (made by a newer tidings) is refused.
pub(super) const SCHEMA_VERSION: i64 = 14;

/// A schema version, what it brings (for the log), and the step that brings it.
type Migration = (i64, &'static str, fn(&Connection) -> rusqlite::Result<()>);

/// The migrations after version 0 (a database of before versioning, or a new one), in order. Each
/// is idempotent, so that a database of before versioning, whatever it already has, ends up whole.
const MIGRATIONS: &[Migration] = &[
    (1, "the tables", |c| c.execute_batch(TABLES)),
    (2, "push_prefs.hide_previews", |c| add_column(c, "push_prefs", "hide_previews", "INTEGER NOT NULL DEFAULT 0")),
    (3, "the stream epoch", |c| {
        c.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('stream_epoch', ?1)",
            [crate::store::new_stream_epoch()],
        )
        .map(|_| ())
    }),
    (4, "stored images", |c| c.execute_batch(super::media::TABLES)),
    (5, "profiles, their search index, public images", |c| {
        c.execute_batch(super::profiles::TABLES)?;
        add_column(c, "media", "public", "INTEGER NOT NULL DEFAULT 0")
    }),
    (6, "the follow graph and blocks", |c| c.execute_batch(super::graph::TABLES)),
    (7, "posts", |c| c.execute_batch(super::posts::TABLES)),
    (8, "home feeds and their fan-out jobs", |c| c.execute_batch(super::feeds::TABLES)),
    (9, "likes and comments", |c| c.execute_batch(super::reactions::TABLES)),
    (10, "activity", |c| c.execute_batch(super::activity::TABLES)),
    (11, "when likes were made", |c| {
        add_column(c, "post_likes", "liked_at_ms", "INTEGER NOT NULL DEFAULT 0")?;
        c.execute_batch(super::reactions::LIKES_BY_TIME)
    }),
    (12, "how far streams were acknowledged", |c| c.execute_batch(super::push::DELIVERED_TABLE)),
    (13, "notifications", |c| c.execute_batch(super::notifications::TABLES)),
    (14, "blocked accounts", |c| c.execute_batch(ACCOUNT_BLOCKS)),
];

/// Accounts the app's backend blocked (server API), with when.
const ACCOUNT_BLOCKS: &str =
    "CREATE TABLE IF NOT EXISTS account_blocks (user_id INTEGER PRIMARY KEY, blocked_at_ms INTEGER NOT NULL);";

/// Brings the database up to `SCHEMA_VERSION`. Each step runs in its own immediate transaction,
/// so processes opening one file at once apply each migration once, in order.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for &(version, what, step) in MIGRATIONS {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let at: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if at > SCHEMA_VERSION {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "the database is at schema version {at}, newer than this tidings knows ({SCHEMA_VERSION}): \
                     run the newer tidings, or restore a backup"
                )));
            }
            if at < version {
                tracing::info!(version, what, "migrating the database");
                step(conn)?;
                conn.pragma_update(None, "user_version", version)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Adds a column unless a database from before versioning already has it.
fn add_column(conn: &Connection, table: &str, column: &str, definition: &str) -> rusqlite::Result<()> {
    let present: bool =
        conn.query_row(&format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"), [column], |r| {
            r.get::<_, i64>(0).map(|n| n > 0)
        })?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the planner's stability guarantee on, the hot statements still find their partial
    /// indexes (their conditions are literal in the SQL, or implied without looking at values).
    #[test]
    fn plans_use_the_partial_indexes_without_peeking_at_bound_values() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("plans.db"), Synchronous::Normal, Duration::from_secs(1)).unwrap();
        migrate(&conn).unwrap();
        let plan = |sql: &str| -> String {
            let mut s = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let unbound = rusqlite::params_from_iter(vec![rusqlite::types::Null; s.parameter_count()]);
            let rows = s.query_map(unbound, |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let by_client_id = plan("SELECT seq FROM entries WHERE room_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3");
        assert!(by_client_id.contains("entries_by_client_msg_id"), "{by_client_id}");
        let due = plan("SELECT job_id FROM push_jobs WHERE state < 2 AND due_ms <= ?1 ORDER BY due_ms LIMIT ?2");
        assert!(due.contains("push_jobs_due"), "{due}");
        let pending = plan("SELECT job_id FROM push_jobs WHERE user_id = ?1 AND room_id = ?2 AND state = 0");
        assert!(pending.contains("push_jobs_by_room") || pending.contains("push_jobs_pending"), "{pending}");
    }

    #[test]
    fn a_database_from_before_a_column_was_added_gets_it_on_open() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE push_prefs (user_id INTEGER PRIMARY KEY, dnd_until_ms INTEGER NOT NULL DEFAULT 0);
             INSERT INTO push_prefs (user_id, dnd_until_ms) VALUES (7, 42);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let row: (i64, i64) = conn
            .query_row("SELECT dnd_until_ms, hide_previews FROM push_prefs WHERE user_id = 7", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, (42, 0));
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_and_the_epoch_is_kept() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let epoch = |c: &Connection| -> String {
            c.query_row("SELECT value FROM meta WHERE key = 'stream_epoch'", [], |r| r.get(0)).unwrap()
        };
        let first = epoch(&conn);
        migrate(&conn).unwrap();
        assert_eq!(epoch(&conn), first, "opening again keeps the epoch");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let refused = migrate(&conn).unwrap_err().to_string();
        assert!(refused.contains("newer than this tidings knows"), "{refused}");
    }
}
