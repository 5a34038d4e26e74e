//! Notifications on SQLite: the notification's row (once per recipient and `dedup_key`), its
//! stream event and its push, in one transaction.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::domain::{NewNotification, Notification, UserId};

/// Version 13 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    recipient INTEGER NOT NULL,
    notification_id INTEGER NOT NULL,
    dedup_key TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (recipient, notification_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS notifications_by_key ON notifications (recipient, dedup_key);
";

const COLUMNS: &str = "recipient, notification_id, title, body, data, at_ms";

fn notification_of(r: &Row<'_>) -> rusqlite::Result<Notification> {
    let data: String = r.get(4)?;
    Ok(Notification {
        recipient: UserId(r.get::<_, i64>(0)? as u64),
        id: r.get::<_, i64>(1)? as u64,
        title: r.get(2)?,
        body: r.get(3)?,
        data: serde_json::from_str(&data)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e)))?,
        at_ms: r.get(5)?,
    })
}

/// The notification recorded before under `new`'s key, with its position, if there is one.
pub(super) fn by_key(tx: &Transaction<'_>, new: &NewNotification) -> rusqlite::Result<Option<(u64, Notification)>> {
    tx.prepare_cached(&format!("SELECT {COLUMNS}, pos FROM notifications WHERE recipient = ?1 AND dedup_key = ?2"))?
        .query_row(params![new.recipient.0 as i64, new.dedup_key], |r| {
            Ok((r.get::<_, i64>(6)? as u64, notification_of(r)?))
        })
        .optional()
}

/// Inserts the notification as `id`; the caller put its stream event at `pos` in the same
/// transaction.
pub(super) fn insert(tx: &Transaction<'_>, new: &NewNotification, id: u64, pos: u64) -> rusqlite::Result<Notification> {
    let notification = new.recorded(id);
    let data = serde_json::to_string(&notification.data).expect("a map of strings serialises");
    tx.prepare_cached(&format!(
        "INSERT INTO notifications ({COLUMNS}, dedup_key, pos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        new.recipient.0 as i64,
        notification.id as i64,
        notification.title,
        notification.body,
        data,
        notification.at_ms,
        new.dedup_key,
        pos as i64
    ])?;
    Ok(notification)
}

pub(super) fn read(c: &Connection, recipient: UserId, id: u64) -> rusqlite::Result<Option<Notification>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM notifications WHERE recipient = ?1 AND notification_id = ?2"))?
        .query_row(params![recipient.0 as i64, id as i64], notification_of)
        .optional()
}
