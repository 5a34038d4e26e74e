//! Activity on ScyllaDB, all in the recipient's partitions: the `dedup_key` claimed by a
//! lightweight transaction (so an activity is recorded once, and a retry after a crash finishes the
//! same one), then the group's state, the activity row, its stream event (a redo finds it), its
//! push, and last the event's position on the row, which marks the activity done.
//!
//! A group's count is read and written without a condition: two activities of one group recorded
//! at the same instant on two nodes may count one fewer. It only words a notification ("ana and 4
//! others"); the counts that must be exact (likes, comments, followers) are kept elsewhere.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::push_queue::PushSource;
use super::streams::StoredEvent;
use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{
    ACTIVITY_PUSH_ROOM, ACTIVITY_UNREAD_CAP, Activity, ActivityGroup, ActivityKind, ActivityStatus, CommentId,
    EventRef, NewActivity, PostId, UserId, describe, time_ordered_id,
};
use crate::store::{ActivityStore, PushFanout, StoreError, StoreErrorKind, StoreResult};

pub(super) struct Statements {
    claim_key: PreparedStatement,
    read: PreparedStatement,
    insert: PreparedStatement,
    set_pos: PreparedStatement,
    read_group: PreparedStatement,
    write_group: PreparedStatement,
    set_seen: PreparedStatement,
    read_seen: PreparedStatement,
    newest: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            claim_key: p("INSERT INTO {ks}.activity_keys (recipient, dedup_key, activity_id) VALUES (?, ?, ?)
                IF NOT EXISTS")
            .await?,
            read: p("SELECT kind, actor, post_id, comment_id, text, at_ms, group_id, group_count, group_actors, pos
                FROM {ks}.activities WHERE recipient = ? AND activity_id = ?")
            .await?,
            insert: p("INSERT INTO {ks}.activities (recipient, activity_id, kind, actor, post_id, comment_id, text,
                at_ms, group_id, group_count, group_actors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .await?,
            set_pos: p("UPDATE {ks}.activities SET pos = ? WHERE recipient = ? AND activity_id = ?").await?,
            read_group: p("SELECT group_id, opened_at_ms, count, actors FROM {ks}.activity_groups
                WHERE recipient = ? AND kind = ? AND post_id = ?")
            .await?,
            write_group: p("INSERT INTO {ks}.activity_groups (recipient, kind, post_id, group_id, opened_at_ms, count,
                actors) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .await?,
            // The position as the write's timestamp: the highest wins, whatever the order.
            set_seen: p("INSERT INTO {ks}.activity_seen (user_id, pos) VALUES (?, ?) USING TIMESTAMP ?").await?,
            read_seen: p("SELECT pos FROM {ks}.activity_seen WHERE user_id = ?").await?,
            newest: p("SELECT pos FROM {ks}.activities WHERE recipient = ? LIMIT ?").await?,
        })
    }
}

type ActivityRow = (i32, i64, i64, i64, Option<String>, i64, i64, i32, Option<Vec<i64>>, Option<i64>);

fn activity_of(recipient: UserId, activity_id: u64, row: ActivityRow) -> StoreResult<Activity> {
    let (kind, actor, post, comment, text, at_ms, group_id, group_count, group_actors, _) = row;
    let kind = ActivityKind::from_code(kind as i64)
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, format!("activity kind {kind} unknown")))?;
    Ok(Activity {
        id: activity_id,
        recipient,
        kind,
        actor: UserId(actor as u64),
        post: PostId(post as u64),
        comment: CommentId(comment as u64),
        text: text.unwrap_or_default(),
        at_ms,
        group: ActivityGroup {
            id: group_id as u64,
            count: group_count as u32,
            actors: group_actors.unwrap_or_default().into_iter().map(|u| UserId(u as u64)).collect(),
        },
    })
}

impl ScyllaStore {
    /// The activity's row, if written.
    pub(super) async fn activity_row(&self, recipient: UserId, activity_id: u64) -> StoreResult<Option<Activity>> {
        let rows = self.rows::<ActivityRow>(&self.activity.read, (id(recipient.0), id(activity_id))).await?;
        rows.into_iter().next().map(|row| activity_of(recipient, activity_id, row)).transpose()
    }

    /// The group `new` joins (the open one of its kind and post, or a new one with `activity_id`
    /// first), written back.
    async fn join_group(&self, new: &NewActivity, activity_id: u64) -> StoreResult<ActivityGroup> {
        let a = &self.activity;
        let key = (id(new.recipient.0), new.kind.code() as i32, id(new.post.0));
        let rows = self.rows::<(i64, i64, i32, Option<Vec<i64>>)>(&a.read_group, key).await?;
        let (open, opened_at) = match rows.into_iter().next() {
            Some((group, opened_at, count, actors)) if opened_at > new.at_ms - new.window_ms => {
                let actors = actors.unwrap_or_default().into_iter().map(|u| UserId(u as u64)).collect();
                (Some(ActivityGroup { id: group as u64, count: count as u32, actors }), opened_at)
            }
            _ => (None, new.at_ms),
        };
        let group = ActivityGroup::joined(open, activity_id, new.actor);
        let actors: Vec<i64> = group.actors.iter().map(|u| id(u.0)).collect();
        let values = (key.0, key.1, key.2, id(group.id), opened_at, group.count as i32, actors);
        self.execute(&a.write_group, values).await?;
        Ok(group)
    }
}

#[async_trait]
impl ActivityStore for ScyllaStore {
    async fn record_activity(
        &self,
        new: NewActivity,
        push: Option<PushFanout>,
    ) -> StoreResult<Option<(u64, Activity)>> {
        self.check_open()?;
        let a = &self.activity;
        let recipient = id(new.recipient.0);
        let fresh = time_ordered_id(new.at_ms);
        let claim = lwt(self.execute(&a.claim_key, (recipient, new.dedup_key(), id(fresh))).await?)?;
        let activity_id = match claim.applied {
            true => fresh,
            false => claim
                .bigint("activity_id")
                .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, "an activity key without its activity"))?
                as u64,
        };
        // A claim found taken is a retry: done if the activity has its position, else finished here.
        let earlier = match claim.applied {
            true => None,
            false => self.rows::<ActivityRow>(&a.read, (recipient, id(activity_id))).await?.into_iter().next(),
        };
        let activity = match earlier {
            Some(row) if row.9.is_some() => return Ok(None),
            Some(row) => activity_of(new.recipient, activity_id, row)?,
            None => {
                let group = self.join_group(&new, activity_id).await?;
                let actors: Vec<i64> = group.actors.iter().map(|u| id(u.0)).collect();
                let values = (
                    recipient,
                    id(activity_id),
                    new.kind.code() as i32,
                    id(new.actor.0),
                    id(new.post.0),
                    id(new.comment.0),
                    &new.text,
                    new.at_ms,
                    id(group.id),
                    group.count as i32,
                    actors,
                );
                self.execute(&a.insert, values).await?;
                new.recorded(activity_id, group)
            }
        };
        let event = StoredEvent { event: EventRef::activity(activity.actor, activity.id), ref_epoch: 0 };
        let positions = self.write_events(&[new.recipient], event, true).await?;
        let pos = positions.first().map_or(0, |&(_, pos)| pos);
        if let Some(mut fanout) = push {
            let name = self.username_of(activity.actor).await?.unwrap_or_default();
            fanout.preview = describe(&activity, &name);
            let source = PushSource { room: ACTIVITY_PUSH_ROOM, seq: activity.id, sender: activity.actor };
            self.enqueue_pushes(&fanout, source, &positions).await?;
        }
        self.execute(&a.set_pos, (pos as i64, recipient, id(activity.id))).await?;
        Ok(Some((pos, activity)))
    }

    async fn set_activity_seen(&self, user: UserId, up_to_pos: u64) -> StoreResult<ActivityStatus> {
        self.check_open()?;
        let pos = up_to_pos as i64;
        self.execute(&self.activity.set_seen, (id(user.0), pos, pos)).await?;
        self.cancel_activity_pushes(user, up_to_pos).await?;
        self.activity_status(user).await
    }

    async fn activity_status(&self, user: UserId) -> StoreResult<ActivityStatus> {
        self.check_open()?;
        let a = &self.activity;
        let seen = self.rows::<(Option<i64>,)>(&a.read_seen, (id(user.0),)).await?;
        let seen = seen.first().and_then(|(pos,)| *pos).unwrap_or(0);
        let newest = self.rows::<(Option<i64>,)>(&a.newest, (id(user.0), ACTIVITY_UNREAD_CAP as i32)).await?;
        // Newest first by id, which follows the position but for activities recorded at once.
        let unread = newest.iter().filter(|(pos,)| pos.is_some_and(|p| p > seen)).count();
        Ok(ActivityStatus { seen_up_to_pos: seen as u64, unread: unread as u32 })
    }
}
