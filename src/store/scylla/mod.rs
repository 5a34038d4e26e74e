//! The store on ScyllaDB (or Apache Cassandra: CQL v4), for clusters of nodes that share no file.
//!
//! Every store trait, tested against a real CQL node by the same conformance suite as SQLite
//! (`tests/it/store_conformance.rs`, when `TIDINGS_SCYLLA_NODES` is set):
//! - `schema.rs`: the keyspace's versioned migrations;
//! - `accounts.rs`: accounts and devices; `push_prefs.rs`: push tokens and preferences;
//! - `rooms.rs`: rooms, members, logs, receipts and the room list; `append.rs`: appends, fenced;
//! - `streams.rs`: users' streams under leases; `fence.rs`: which rows of a fenced log count;
//! - `push_queue.rs`: the push queue; `media.rs`: stored images.
//!
//! Rules every part follows (the driver's guidance): prepared statements only, every statement
//! names its partition key, reads of more than one row are paged, and lightweight transactions only
//! where uniqueness needs one and never on the per-message path.

mod accounts;
mod activity;
mod append;
mod feeds;
mod fence;
mod graph;
mod media;
mod notifications;
mod posts;
mod profiles;
mod push_prefs;
mod push_queue;
mod reactions;
mod rooms;
mod schema;
mod streams;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use crate::domain::{StreamEvent, UserId};
use crate::store::{Store, StoreError, StoreErrorKind, StoreResult, StreamStore};

/// Where the cluster is and how its data is kept.
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    /// For every read and write (QUORUM unless set): with replication 3, QUORUM survives one node
    /// down and reads what was acknowledged.
    pub consistency: Consistency,
    /// How many seqs (or stream positions) share one partition of a room's log (or a stream).
    pub bucket_size: u64,
    /// An entry for at least this many recipients is acknowledged once it is in the room's log,
    /// and reaches their streams after (`AppendOutcome::Logged`); a smaller one before.
    pub fanout_after_ack_from: usize,
}

impl ScyllaOptions {
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            nodes,
            keyspace: keyspace.into(),
            replication_factor: 1,
            consistency: Consistency::Quorum,
            bucket_size: crate::store::ENTRY_BUCKET_SIZE,
            fanout_after_ack_from: crate::config::DEFAULT_FANOUT_AFTER_ACK_FROM,
        }
    }
}

/// The store on a CQL cluster. Cheap to clone: every clone is the same store.
#[derive(Clone)]
pub struct ScyllaStore(Arc<Parts>);

pub struct Parts {
    session: Session,
    options: ScyllaOptions,
    accounts: accounts::Statements,
    push_prefs: push_prefs::Statements,
    rooms: rooms::Statements,
    streams: streams::Streams,
    appends: append::Appends,
    push_queue: push_queue::Statements,
    media: media::Statements,
    profiles: profiles::Statements,
    graph: graph::Statements,
    posts: posts::Statements,
    feeds: feeds::Statements,
    reactions: reactions::Statements,
    activity: activity::Statements,
    notifications: notifications::Statements,
    closed: AtomicBool,
}

impl Deref for ScyllaStore {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl ScyllaStore {
    /// Connects, brings the keyspace's schema up to date, and prepares every statement.
    pub async fn open(options: ScyllaOptions) -> Result<Self, StoreError> {
        if options.bucket_size == 0 {
            return Err(StoreError::unavailable("the bucket size must be at least 1"));
        }
        if !options.keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || options.keyspace.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "store.scylla_keyspace: letters, digits and _ only",
            ));
        }
        let session = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .build()
            .await
            .map_err(|e| StoreError::caused_by(StoreErrorKind::Unavailable, e))?;
        schema::migrate(&session, &options).await?;
        let accounts = accounts::Statements::prepare(&session, &options).await?;
        let push_prefs = push_prefs::Statements::prepare(&session, &options).await?;
        let rooms = rooms::Statements::prepare(&session, &options).await?;
        let streams = streams::Streams::prepare(&session, &options).await?;
        let push_queue = push_queue::Statements::prepare(&session, &options).await?;
        let media = media::Statements::prepare(&session, &options).await?;
        let profiles = profiles::Statements::prepare(&session, &options).await?;
        let graph = graph::Statements::prepare(&session, &options).await?;
        let posts = posts::Statements::prepare(&session, &options).await?;
        let feeds = feeds::Statements::prepare(&session, &options).await?;
        let reactions = reactions::Statements::prepare(&session, &options).await?;
        let activity = activity::Statements::prepare(&session, &options).await?;
        let notifications = notifications::Statements::prepare(&session, &options).await?;
        Ok(Self(Arc::new(Parts {
            session,
            options,
            accounts,
            push_prefs,
            rooms,
            streams,
            appends: append::Appends::default(),
            push_queue,
            media,
            profiles,
            graph,
            posts,
            feeds,
            reactions,
            activity,
            notifications,
            closed: AtomicBool::new(false),
        })))
    }

    pub fn keyspace(&self) -> &str {
        &self.options.keyspace
    }

    /// Drops `keyspace` on the cluster at `nodes` (tests clean up with this).
    pub async fn drop_keyspace_on(nodes: Vec<String>, keyspace: &str) -> Result<(), StoreError> {
        let session = SessionBuilder::new().known_nodes(&nodes).build().await.map_err(unavailable)?;
        let cql = format!("DROP KEYSPACE IF EXISTS {keyspace}");
        session.query_unpaged(cql, ()).await.map_err(unavailable)?;
        Ok(())
    }

    /// Empties every table of a keyspace but its schema version (tests reuse keyspaces with this:
    /// creating one takes seconds). Nothing may be using it.
    pub async fn truncate_keyspace_on(nodes: Vec<String>, keyspace: &str) -> Result<(), StoreError> {
        let session = SessionBuilder::new().known_nodes(&nodes).build().await.map_err(unavailable)?;
        let tables: Vec<String> = session
            .query_unpaged("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", (keyspace,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?
            .rows::<(String,)>()
            .map_err(unavailable)?
            .filter_map(|row| row.ok().map(|(t,)| t))
            .filter(|t| t != "schema_migrations")
            .collect();
        if tables.is_empty() {
            return Err(StoreError::unavailable(format!("keyspace {keyspace} has no tables")));
        }
        // One at a time: each flushes, and a burst of them stalls the node's other writes.
        for table in tables {
            session.query_unpaged(format!("TRUNCATE {keyspace}.{table}"), ()).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Drops the keyspace and everything in it (tests clean up with this).
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.options.keyspace);
        self.session.query_unpaged(cql, ()).await.map_err(unavailable)?;
        Ok(())
    }
}

impl ScyllaStore {
    fn check_open(&self) -> StoreResult<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(StoreError::unavailable("the store is closed")),
            false => Ok(()),
        }
    }

    pub(super) async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<QueryResult> {
        self.session.execute_unpaged(statement, values).await.map_err(unavailable)
    }

    /// The rows of a one-partition read, typed.
    pub(super) async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
    {
        let rows = self.execute(statement, values).await?.into_rows_result().map_err(corrupt)?;
        rows.rows::<R>().map_err(corrupt)?.collect::<Result<Vec<R>, _>>().map_err(corrupt)
    }
}

/// Prepares `cql` (with `{ks}` for the keyspace) at the store's consistency.
async fn prepare(session: &Session, options: &ScyllaOptions, cql: &str) -> Result<PreparedStatement, StoreError> {
    let mut statement = session.prepare(cql.replace("{ks}", &options.keyspace)).await.map_err(unavailable)?;
    statement.set_consistency(options.consistency);
    Ok(statement)
}

/// A driver error: the cluster cannot serve now (retry later), with the driver's error as source.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::caused_by(StoreErrorKind::Unavailable, e)
}

/// Stored data that does not decode: a bug or a schema mismatch.
fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::caused_by(StoreErrorKind::Corrupt, e)
}

/// Ids are random 63-bit numbers: they fit CQL's signed bigint as they fit SQLite's INTEGER.
fn id(value: u64) -> i64 {
    value as i64
}

/// A lightweight transaction's answer: whether it applied, and the row it found otherwise, by
/// column name.
struct Lwt {
    applied: bool,
    found: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    fn bigint(&self, column: &str) -> Option<i64> {
        self.found.iter().find(|(name, _)| name == column).and_then(|(_, value)| match value {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        })
    }

    fn text(&self, column: &str) -> Option<String> {
        self.found.iter().find(|(name, _)| name == column).and_then(|(_, value)| match value {
            Some(CqlValue::Text(v)) => Some(v.clone()),
            _ => None,
        })
    }
}

fn lwt(result: scylla::response::query_result::QueryResult) -> StoreResult<Lwt> {
    let rows = result.into_rows_result().map_err(corrupt)?;
    let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
    let row: Row = rows.first_row().map_err(corrupt)?;
    let applied = match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => *applied,
        other => return Err(StoreError::new(StoreErrorKind::Corrupt, format!("no [applied] column: {other:?}"))),
    };
    Ok(Lwt { applied, found: names.into_iter().zip(row.columns).collect() })
}

#[async_trait]
impl StreamStore for ScyllaStore {
    async fn events_after(&self, user: UserId, after_pos: u64, limit: usize) -> StoreResult<Vec<(u64, StreamEvent)>> {
        self.check_open()?;
        self.stream_events_after(user, after_pos, limit).await
    }

    async fn stream_head(&self, user: UserId) -> StoreResult<u64> {
        self.check_open()?;
        self.stream_head_of(user).await
    }

    async fn stream_epoch(&self, _user: UserId) -> StoreResult<String> {
        self.check_open()?;
        self.streams_epoch().await
    }

    async fn rotate_stream_epochs(&self) -> StoreResult<String> {
        self.check_open()?;
        self.rotate_streams_epoch().await
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.streams_epoch().await.is_ok()
    }

    async fn close(&self) {
        // Appends in flight finish (each is a few round trips); nothing new starts.
        self.closed.store(true, Ordering::Release);
        for _ in 0..100 {
            if self.appends.idle() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl ScyllaStore {
    /// Moves a fenced key's epoch on by one with a lightweight transaction: `create` inserts epoch 1
    /// `IF NOT EXISTS` (bound to the key), `advance` sets `epoch + 1 ... IF epoch = ?` (bound to the
    /// new epoch, the key and the old one). Returns the new epoch, or `None` when other writers kept
    /// winning (`tries` times).
    pub(super) async fn next_epoch(
        &self,
        create: &PreparedStatement,
        advance: &PreparedStatement,
        key: i64,
        mut current: u64,
        tries: usize,
    ) -> StoreResult<Option<u64>> {
        for _ in 0..tries {
            let result = match current {
                0 => lwt(self.execute(create, (key,)).await?)?,
                _ => lwt(self.execute(advance, ((current + 1) as i64, key, current as i64)).await?)?,
            };
            if result.applied {
                return Ok(Some(current + 1));
            }
            current = result.bigint("epoch").unwrap_or(0) as u64;
        }
        Ok(None)
    }
}
