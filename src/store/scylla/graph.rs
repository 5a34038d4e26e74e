//! The follow graph on ScyllaDB, with exact counts and no transaction across partitions.
//!
//! A follow F -> X is an edge in two places: F's `follows_out` (the truth) and X's `follows_in`
//! (its mirror). Each user's edges of one direction are spread over `SHARDS` partitions, and each
//! partition holds a count row (`other` = -1) of its approved follows. An edge and its partition's
//! count change together, in one conditional batch on that partition (a lightweight transaction:
//! follows are rare next to messages, and spread over `SHARDS` partitions a popular account's
//! followers do not queue on one). So a count is exact whatever fails: a retried change finds the
//! edge as it wanted it and changes nothing.
//!
//! A change moves F's edge to a new version, then brings X's mirror up to that version (a mirror
//! never goes back to an older one, so racing changes settle on the newest). Edges are never
//! deleted (state NONE), so versions only grow. Before the first step the pair is listed in
//! `follows_unsettled` with the version it will make, written at that version as its timestamp;
//! the mirror unlists it at the version it reached, which removes no later listing. If the
//! process dies in between, `settle_follows` (run periodically) finishes the mirror; a listing
//! whose change was never made (the process died before it) goes after `ABANDONED_AFTER_MS`.

use async_trait::async_trait;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare, unavailable};
use crate::domain::{FollowCounts, FollowList, FollowState, UserId, now_ms};
use crate::store::{GraphStore, StoreError, StoreErrorKind, StoreResult};

/// Partitions per user and direction.
const SHARDS: i32 = 8;
/// Partitions of the unsettled listing.
const UNSETTLED_SHARDS: i32 = 8;
/// A listed change whose edge is still older than it after this long was never made.
const ABANDONED_AFTER_MS: i64 = 60_000;
/// Conditional writes tried before a change gives up (others kept changing the same partition).
const TRIES: usize = 64;

fn shard_of(user: UserId) -> i32 {
    (user.0 % SHARDS as u64) as i32
}

/// The statements of one direction's table (`follows_out` or `follows_in`).
struct EdgeTable {
    read_edge: PreparedStatement,
    /// The same at the store's consistency: for reads that decide nothing a write depends on.
    peek_edge: PreparedStatement,
    read_count: PreparedStatement,
    init_count: PreparedStatement,
    set_count: PreparedStatement,
    insert_edge: PreparedStatement,
    update_edge: PreparedStatement,
    counts: PreparedStatement,
    page: PreparedStatement,
}

impl EdgeTable {
    async fn prepare(session: &Session, options: &ScyllaOptions, table: &str) -> Result<Self, StoreError> {
        let p = |cql: &'static str| {
            let cql = cql.replace("{t}", table);
            async move { prepare(session, options, &cql).await }
        };
        let mut read_edge =
            p("SELECT state, version FROM {ks}.{t} WHERE user_id = ? AND shard = ? AND other = ?").await?;
        let peek_edge = p("SELECT state, version FROM {ks}.{t} WHERE user_id = ? AND shard = ? AND other = ?").await?;
        let mut read_count = p("SELECT count FROM {ks}.{t} WHERE user_id = ? AND shard = ? AND other = -1").await?;
        // What the last conditional write decided.
        read_edge.set_consistency(Consistency::Serial);
        read_count.set_consistency(Consistency::Serial);
        Ok(Self {
            read_edge,
            peek_edge,
            read_count,
            init_count: p("INSERT INTO {ks}.{t} (user_id, shard, other, count) VALUES (?, ?, -1, 0) IF NOT EXISTS").await?,
            set_count: p("UPDATE {ks}.{t} SET count = ? WHERE user_id = ? AND shard = ? AND other = -1 IF count = ?").await?,
            insert_edge: p("INSERT INTO {ks}.{t} (user_id, shard, other, state, version) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
                .await?,
            update_edge: p("UPDATE {ks}.{t} SET state = ?, version = ? WHERE user_id = ? AND shard = ? AND other = ? IF version = ?")
                .await?,
            counts: p("SELECT count FROM {ks}.{t} WHERE user_id = ? AND shard IN ? AND other = -1").await?,
            page: p("SELECT other, state FROM {ks}.{t} WHERE user_id = ? AND shard = ? AND other > ? LIMIT ?").await?,
        })
    }
}

pub(super) struct Statements {
    out: EdgeTable,
    incoming: EdgeTable,
    list_unsettled: PreparedStatement,
    unlist_unsettled: PreparedStatement,
    unsettled: PreparedStatement,
    block: PreparedStatement,
    unblock: PreparedStatement,
    blocked_by: PreparedStatement,
    unblocked_by: PreparedStatement,
    blockers_in: PreparedStatement,
    blocks_page: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            out: EdgeTable::prepare(session, options, "follows_out").await?,
            incoming: EdgeTable::prepare(session, options, "follows_in").await?,
            list_unsettled: p("INSERT INTO {ks}.follows_unsettled (shard, follower, followee, version, at_ms)
                VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")
            .await?,
            unlist_unsettled: p("DELETE FROM {ks}.follows_unsettled USING TIMESTAMP ?
                WHERE shard = ? AND follower = ? AND followee = ?")
            .await?,
            unsettled: p(
                "SELECT follower, followee, version, at_ms FROM {ks}.follows_unsettled WHERE shard = ? LIMIT ?",
            )
            .await?,
            block: p("INSERT INTO {ks}.blocks (user_id, other) VALUES (?, ?)").await?,
            unblock: p("DELETE FROM {ks}.blocks WHERE user_id = ? AND other = ?").await?,
            blocked_by: p("INSERT INTO {ks}.blocked_by (user_id, other) VALUES (?, ?)").await?,
            unblocked_by: p("DELETE FROM {ks}.blocked_by WHERE user_id = ? AND other = ?").await?,
            blockers_in: p("SELECT other FROM {ks}.blocked_by WHERE user_id = ? AND other IN ?").await?,
            blocks_page: p("SELECT other FROM {ks}.blocks WHERE user_id = ? AND other > ? LIMIT ?").await?,
        })
    }
}

/// An edge as read: its state and version (0: never written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    state: FollowState,
    version: i64,
}

impl ScyllaStore {
    async fn edge(&self, table: &EdgeTable, user: UserId, shard: i32, other: UserId) -> StoreResult<Edge> {
        self.edge_by(&table.read_edge, user, shard, other).await
    }

    /// `edge`, read with `statement` (serial, before a conditional write; or not, for a read).
    async fn edge_by(
        &self,
        statement: &PreparedStatement,
        user: UserId,
        shard: i32,
        other: UserId,
    ) -> StoreResult<Edge> {
        let rows = self.rows::<(Option<i32>, Option<i64>)>(statement, (id(user.0), shard, id(other.0))).await?;
        Ok(match rows.first() {
            Some(&(state, version)) => Edge {
                state: state.and_then(FollowState::from_code).unwrap_or_default(),
                version: version.unwrap_or(0),
            },
            None => Edge { state: FollowState::None, version: 0 },
        })
    }

    /// The partition's count, creating its row if it has none.
    async fn count(&self, table: &EdgeTable, user: UserId, shard: i32) -> StoreResult<i64> {
        let key = (id(user.0), shard);
        if let Some(&(count,)) = self.rows::<(Option<i64>,)>(&table.read_count, key).await?.first() {
            return Ok(count.unwrap_or(0));
        }
        self.execute(&table.init_count, key).await?;
        Ok(self.rows::<(Option<i64>,)>(&table.read_count, key).await?.first().and_then(|(c,)| *c).unwrap_or(0))
    }

    /// Writes `user`'s edge to `other` in `table` as `new` at `version` if it still is `old`,
    /// moving the partition's count with it; whether it was applied.
    async fn write_edge(
        &self,
        table: &EdgeTable,
        (user, shard, other): (UserId, i32, UserId),
        old: Edge,
        new: Edge,
    ) -> StoreResult<bool> {
        let count = self.count(table, user, shard).await?;
        let delta = i64::from(new.state == FollowState::Following) - i64::from(old.state == FollowState::Following);
        let (u, o) = (id(user.0), id(other.0));
        let count_values = (count + delta, u, shard, count);
        // One partition: atomic without the batch log.
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_consistency(self.options.consistency);
        batch.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
        batch.append_statement(table.set_count.clone());
        let result = if old.version == 0 {
            batch.append_statement(table.insert_edge.clone());
            let values = (count_values, (u, shard, o, new.state.code(), new.version));
            self.session.batch(&batch, values).await
        } else {
            batch.append_statement(table.update_edge.clone());
            let values = (count_values, (new.state.code(), new.version, u, shard, o, old.version));
            self.session.batch(&batch, values).await
        };
        Ok(lwt(result.map_err(unavailable)?)?.applied)
    }

    /// Brings the mirror of `from`'s edge to `to` up to `edge` (or a later version, if one is
    /// there already), then unlists the pair at that version.
    async fn mirror(&self, from: UserId, to: UserId, edge: Edge) -> StoreResult<()> {
        let g = &self.graph;
        let place = (to, shard_of(from), from);
        for _ in 0..TRIES {
            let mirrored = self.edge(&g.incoming, to, place.1, from).await?;
            if mirrored.version >= edge.version {
                let values = (edge.version, (from.0 % UNSETTLED_SHARDS as u64) as i32, id(from.0), id(to.0));
                self.execute(&g.unlist_unsettled, values).await?;
                return Ok(());
            }
            self.write_edge(&g.incoming, place, mirrored, edge).await?;
        }
        Err(StoreError::unavailable("the follow kept changing while it was mirrored"))
    }
}

#[async_trait]
impl GraphStore for ScyllaStore {
    async fn followers_among(&self, followee: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.check_open()?;
        let mut found = Vec::new();
        for chunk in users.chunks(256) {
            let states = futures_util::future::try_join_all(chunk.iter().map(|&user| async move {
                Ok::<_, StoreError>(
                    self.edge_by(&self.graph.out.peek_edge, user, shard_of(followee), followee).await?.state,
                )
            }))
            .await?;
            found.extend(chunk.iter().zip(states).filter(|(_, s)| *s == FollowState::Following).map(|(u, _)| *u));
        }
        Ok(found)
    }

    async fn follow_state(&self, from: UserId, to: UserId) -> StoreResult<FollowState> {
        self.check_open()?;
        // A read at the store's consistency (QUORUM) sees every committed change; a serial read
        // (a Paxos round) is only needed before a conditional write.
        Ok(self.edge_by(&self.graph.out.peek_edge, from, shard_of(to), to).await?.state)
    }

    async fn set_follow(
        &self,
        from: UserId,
        to: UserId,
        state: FollowState,
        when: &[FollowState],
    ) -> StoreResult<FollowState> {
        self.check_open()?;
        let g = &self.graph;
        let place = (from, shard_of(to), to);
        for _ in 0..TRIES {
            let old = self.edge(&g.out, from, place.1, to).await?;
            if (!when.is_empty() && !when.contains(&old.state)) || old.state == state {
                return Ok(old.state);
            }
            let new = Edge { state, version: old.version + 1 };
            let (shard, version) = ((from.0 % UNSETTLED_SHARDS as u64) as i32, new.version);
            let listing = (shard, id(from.0), id(to.0), version, now_ms(), version);
            self.execute(&g.list_unsettled, listing).await?;
            if self.write_edge(&g.out, place, old, new).await? {
                self.mirror(from, to, new).await?;
                return Ok(old.state);
            }
        }
        Err(StoreError::unavailable("the follow kept changing; try again"))
    }

    async fn follow_counts(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, FollowCounts)>> {
        self.check_open()?;
        let g = &self.graph;
        let shards: Vec<i32> = (0..SHARDS).collect();
        let sum = |rows: Vec<(Option<i64>,)>| rows.iter().map(|(c,)| c.unwrap_or(0)).sum::<i64>().max(0) as u64;
        try_join_all(users.into_iter().map(|user| {
            let shards = &shards;
            async move {
                let (following, followers) = futures_util::try_join!(
                    self.rows::<(Option<i64>,)>(&g.out.counts, (id(user.0), shards)),
                    self.rows::<(Option<i64>,)>(&g.incoming.counts, (id(user.0), shards)),
                )?;
                Ok::<_, StoreError>((user, FollowCounts { followers: sum(followers), following: sum(following) }))
            }
        }))
        .await
    }

    async fn follow_list(
        &self,
        user: UserId,
        list: FollowList,
        after: Option<UserId>,
        limit: usize,
    ) -> StoreResult<Vec<UserId>> {
        self.check_open()?;
        let g = &self.graph;
        let after = after.map_or(0, |u| id(u.0));
        let (table, wanted) = match list {
            FollowList::Followers => (&g.incoming, FollowState::Following),
            FollowList::Following => (&g.out, FollowState::Following),
            FollowList::Requests => (&g.incoming, FollowState::Requested),
            FollowList::Blocked => {
                let rows = self.rows::<(i64,)>(&g.blocks_page, (id(user.0), after, limit as i32)).await?;
                return Ok(rows.into_iter().map(|(u,)| UserId(u as u64)).collect());
            }
        };
        // Each shard's first `limit` matching edges after the cursor, merged in id order.
        let per_shard = (0..SHARDS).map(|shard| async move {
            let mut found = Vec::new();
            let mut from = after;
            loop {
                let rows = self
                    .rows::<(i64, Option<i32>)>(&table.page, (id(user.0), shard, from, (limit * 2).max(16) as i32))
                    .await?;
                let read = rows.len();
                for (other, state) in rows {
                    from = other;
                    if state.and_then(FollowState::from_code) == Some(wanted) && found.len() < limit {
                        found.push(other);
                    }
                }
                if found.len() >= limit || read < (limit * 2).max(16) {
                    return Ok::<_, StoreError>(found);
                }
            }
        });
        let mut all: Vec<i64> = try_join_all(per_shard).await?.into_iter().flatten().collect();
        all.sort_unstable();
        all.truncate(limit);
        Ok(all.into_iter().map(|u| UserId(u as u64)).collect())
    }

    async fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<()> {
        self.check_open()?;
        if blocker == blocked {
            return Err(StoreError::new(StoreErrorKind::Conflict, "one cannot block oneself"));
        }
        let g = &self.graph;
        let (a, b) = (id(blocker.0), id(blocked.0));
        // The side that is enforced first (`blockers_of` reads it), the blocker's list after.
        if on {
            self.execute(&g.blocked_by, (b, a)).await?;
            self.execute(&g.block, (a, b)).await?;
        } else {
            self.execute(&g.unblock, (a, b)).await?;
            self.execute(&g.unblocked_by, (b, a)).await?;
        }
        Ok(())
    }

    async fn blockers_of(&self, user: UserId, others: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.check_open()?;
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = others.iter().map(|u| id(u.0)).collect();
        let rows = self.rows::<(i64,)>(&self.graph.blockers_in, (id(user.0), ids)).await?;
        Ok(rows.into_iter().map(|(u,)| UserId(u as u64)).collect())
    }

    async fn settle_follows(&self, limit: usize) -> StoreResult<u64> {
        self.check_open()?;
        let g = &self.graph;
        let mut settled = 0;
        for shard in 0..UNSETTLED_SHARDS {
            let listed = self.rows::<(i64, i64, Option<i64>, Option<i64>)>(&g.unsettled, (shard, limit as i32)).await?;
            for (from, to, version, at_ms) in listed {
                let (from, to, version) = (UserId(from as u64), UserId(to as u64), version.unwrap_or(0));
                let edge = self.edge(&g.out, from, shard_of(to), to).await?;
                if edge.version >= version {
                    self.mirror(from, to, edge).await?;
                } else if now_ms() - at_ms.unwrap_or(0) > ABANDONED_AFTER_MS {
                    // Listed, then never made: the process died first, or lost its race.
                    self.execute(&g.unlist_unsettled, (version, shard, id(from.0), id(to.0))).await?;
                } else {
                    continue; // being made now
                }
                settled += 1;
            }
        }
        Ok(settled)
    }
}
