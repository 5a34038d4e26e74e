//! Notifications on ScyllaDB, all in the recipient's partitions: the `dedup_key` claimed by a
//! lightweight transaction (so a notification is recorded once, and a retry after a crash finishes
//! the same one), then the notification's row, its stream event (a redo finds it), its push, and
//! last the event's position on the row, which marks the notification done.

use std::collections::BTreeMap;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::push_queue::PushSource;
use super::streams::StoredEvent;
use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{
    EventRef, NOTIFICATION_PUSH_ROOM, NewNotification, Notification, NotificationPush, UserId, time_ordered_id,
};
use crate::store::{NotificationStore, PushFanout, RecordedNotification, StoreError, StoreErrorKind, StoreResult};

/// Version 14 of the schema.
pub(super) const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.notifications (recipient bigint, notification_id bigint, title text, body text,
        data map<text, text>, at_ms bigint, pos bigint, PRIMARY KEY (recipient, notification_id))
        WITH CLUSTERING ORDER BY (notification_id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.notification_keys (recipient bigint, dedup_key text, notification_id bigint,
        PRIMARY KEY (recipient, dedup_key))",
];

pub(super) struct Statements {
    claim_key: PreparedStatement,
    read: PreparedStatement,
    insert: PreparedStatement,
    set_pos: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            claim_key: p("INSERT INTO {ks}.notification_keys (recipient, dedup_key, notification_id) VALUES (?, ?, ?)
                IF NOT EXISTS")
            .await?,
            read: p("SELECT title, body, data, at_ms, pos FROM {ks}.notifications
                WHERE recipient = ? AND notification_id = ?")
            .await?,
            insert: p("INSERT INTO {ks}.notifications (recipient, notification_id, title, body, data, at_ms)
                VALUES (?, ?, ?, ?, ?, ?)")
            .await?,
            set_pos: p("UPDATE {ks}.notifications SET pos = ? WHERE recipient = ? AND notification_id = ?").await?,
        })
    }
}

type NotificationRow = (Option<String>, Option<String>, Option<BTreeMap<String, String>>, i64, Option<i64>);

fn notification_of(recipient: UserId, notification_id: u64, row: NotificationRow) -> Notification {
    let (title, body, data, at_ms, _) = row;
    Notification {
        id: notification_id,
        recipient,
        title: title.unwrap_or_default(),
        body: body.unwrap_or_default(),
        data: data.unwrap_or_default(),
        at_ms,
    }
}

impl ScyllaStore {
    /// The notification's row and its position (once recorded), if written.
    async fn notification_with_pos(
        &self,
        recipient: UserId,
        notification_id: u64,
    ) -> StoreResult<Option<(Notification, Option<u64>)>> {
        let key = (id(recipient.0), id(notification_id));
        let rows = self.rows::<NotificationRow>(&self.notifications.read, key).await?;
        Ok(rows.into_iter().next().map(|row| {
            let pos = row.4.map(|p| p as u64);
            (notification_of(recipient, notification_id, row), pos)
        }))
    }

    /// The notification's row, if written.
    pub(super) async fn notification_row(
        &self,
        recipient: UserId,
        notification_id: u64,
    ) -> StoreResult<Option<Notification>> {
        Ok(self.notification_with_pos(recipient, notification_id).await?.map(|(n, _)| n))
    }
}

#[async_trait]
impl NotificationStore for ScyllaStore {
    async fn record_notification(
        &self,
        new: NewNotification,
        push: Option<PushFanout>,
    ) -> StoreResult<RecordedNotification> {
        self.check_open()?;
        let s = &self.notifications;
        let recipient = id(new.recipient.0);
        let fresh_id = time_ordered_id(new.at_ms);
        let claim = lwt(self.execute(&s.claim_key, (recipient, &new.dedup_key, id(fresh_id))).await?)?;
        let notification_id = match claim.applied {
            true => fresh_id,
            false => claim.bigint("notification_id").ok_or_else(|| {
                StoreError::new(StoreErrorKind::Corrupt, "a notification key without its notification")
            })? as u64,
        };
        // A claim found taken is a retry: done if the notification has its position, else
        // finished here.
        let earlier = match claim.applied {
            true => None,
            false => self.notification_with_pos(new.recipient, notification_id).await?,
        };
        let notification = match earlier {
            Some((notification, Some(pos))) => return Ok(RecordedNotification { pos, notification, fresh: false }),
            Some((notification, None)) => notification,
            None => {
                let notification = new.recorded(notification_id);
                let values = (
                    recipient,
                    id(notification_id),
                    &notification.title,
                    &notification.body,
                    &notification.data,
                    notification.at_ms,
                );
                self.execute(&s.insert, values).await?;
                notification
            }
        };
        let event = StoredEvent { event: EventRef::notification(notification_id), ref_epoch: 0 };
        let positions = self.write_events(&[new.recipient], event, true).await?;
        let pos = positions.first().map_or(0, |&(_, pos)| pos);
        if let Some(mut fanout) = push {
            fanout.preview = NotificationPush::of(&notification).encode();
            let source = PushSource { room: NOTIFICATION_PUSH_ROOM, seq: notification_id, sender: UserId(0) };
            self.enqueue_pushes(&fanout, source, &positions).await?;
        }
        self.execute(&s.set_pos, (pos as i64, recipient, id(notification_id))).await?;
        Ok(RecordedNotification { pos, notification, fresh: true })
    }
}
