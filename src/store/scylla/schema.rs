//! The keyspace and its versioned schema. Each migration is a list of idempotent CQL statements
//! (`IF NOT EXISTS`); `schema_migrations` records the versions applied, so nodes starting together
//! apply the same statements harmlessly and a node finding a newer version than it knows refuses
//! to start.

use scylla::client::session::Session;

use super::{ScyllaOptions, unavailable};
use crate::store::{StoreError, StoreErrorKind};

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i32 = 15;

/// (version, what it brings, its statements; `{ks}` is the keyspace).
const MIGRATIONS: &[(i32, &str, &[&str])] = &[
    (
        1,
        "accounts and devices",
        &[
            // A user's row is written before its name is claimed: a crash between the two leaves an
            // unreachable row under a random id, never a name that no account holds.
            "CREATE TABLE IF NOT EXISTS {ks}.users (
            user_id bigint PRIMARY KEY, username text, password_hash text, created_at_ms bigint)",
            // Usernames are unique by a lightweight transaction (sign-up only, never a hot path).
            "CREATE TABLE IF NOT EXISTS {ks}.usernames (username text PRIMARY KEY, user_id bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.devices (
            user_id bigint, device_id bigint, name text, refresh_hash blob, refresh_previous blob,
            refresh_expires_at_ms bigint, created_at_ms bigint, revoked boolean,
            PRIMARY KEY (user_id, device_id))",
            // Apart from `users`: an update there would create a row for a user that does not exist.
            "CREATE TABLE IF NOT EXISTS {ks}.last_seen (user_id bigint PRIMARY KEY, at_ms bigint)",
            // A device's push token; revoking the device removes it.
            "CREATE TABLE IF NOT EXISTS {ks}.push_tokens (
            user_id bigint, device_id bigint, platform int, push_token text, app_id text, locale text,
            sandbox boolean, PRIMARY KEY (user_id, device_id))",
        ],
    ),
    (
        2,
        "push token owners and preferences",
        &[
            // Who holds a token: claimed by a lightweight transaction, so no two accounts hold one.
            "CREATE TABLE IF NOT EXISTS {ks}.push_token_owners (
                platform int, push_token text, user_id bigint, device_id bigint,
                PRIMARY KEY ((platform, push_token)))",
            "CREATE TABLE IF NOT EXISTS {ks}.room_mutes (
                user_id bigint, room_id bigint, until_ms bigint, PRIMARY KEY (user_id, room_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.push_prefs (user_id bigint PRIMARY KEY, dnd_until_ms bigint, hide_previews boolean)",
        ],
    ),
    (
        3,
        "rooms, their logs, streams and the push queue",
        &[
            "CREATE TABLE IF NOT EXISTS {ks}.meta (key text PRIMARY KEY, value text)",
            "CREATE TABLE IF NOT EXISTS {ks}.rooms (room_id bigint PRIMARY KEY, kind int, name text, created_at_ms bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.room_members (room_id bigint, user_id bigint, role int,
                PRIMARY KEY (room_id, user_id))",
            // Receipt markers, written USING TIMESTAMP = the seq: the highest marker wins whatever
            // order concurrent writes land in, so a marker never moves back.
            "CREATE TABLE IF NOT EXISTS {ks}.room_markers (room_id bigint, user_id bigint, delivered_seq bigint,
                read_seq bigint, PRIMARY KEY (room_id, user_id))",
            // Each user's room list, maintained with memberships (never a join).
            "CREATE TABLE IF NOT EXISTS {ks}.user_rooms (user_id bigint, room_id bigint, PRIMARY KEY (user_id, room_id))",
            // One direct room per pair: claimed by a lightweight transaction (room creation only).
            "CREATE TABLE IF NOT EXISTS {ks}.direct_rooms (user_lo bigint, user_hi bigint, room_id bigint,
                PRIMARY KEY ((user_lo, user_hi)))",
            // Who has sent a message in a room (the 'wrote to' rule of group adds).
            "CREATE TABLE IF NOT EXISTS {ks}.room_senders (room_id bigint, sender_id bigint, PRIMARY KEY (room_id, sender_id))",
            // The room's writer epoch: moved only by a lightweight transaction (a takeover), and read
            // at QUORUM after each append (the fence; see store/scylla/append.rs).
            "CREATE TABLE IF NOT EXISTS {ks}.room_epochs (room_id bigint PRIMARY KEY, epoch bigint)",
            // Where each epoch's writer started: rows of an older epoch at or past a newer epoch's
            // start were never acknowledged, and readers ignore them.
            "CREATE TABLE IF NOT EXISTS {ks}.room_claims (room_id bigint, epoch bigint, start_seq bigint,
                PRIMARY KEY (room_id, epoch))",
            // The room's log, one partition per bucket of seqs; the epoch in the key keeps two writers
            // from overwriting each other. `recipients`: whose streams the entry goes to, so that a
            // fan-out cut short by a crash is finished by the next writer.
            "CREATE TABLE IF NOT EXISTS {ks}.room_entries (room_id bigint, bucket bigint, seq bigint, epoch bigint,
                id bigint, sender_id bigint, sent_at_ms bigint, kind int, text text, client_msg_id text,
                target_seq bigint, users text, role int, edited_at_ms bigint, deleted boolean,
                recipients list<bigint>, PRIMARY KEY ((room_id, bucket), seq, epoch))",
            "CREATE TABLE IF NOT EXISTS {ks}.room_buckets (room_id bigint, bucket bigint, PRIMARY KEY (room_id, bucket))",
            // How far the room's entries are in their recipients' streams (USING TIMESTAMP = seq).
            "CREATE TABLE IF NOT EXISTS {ks}.room_fanout (room_id bigint PRIMARY KEY, seq bigint)",
            // Idempotent sends: a client's message id, per room and sender.
            "CREATE TABLE IF NOT EXISTS {ks}.client_msgs (room_id bigint, sender_id bigint, client_msg_id text,
                epoch bigint, seq bigint, id bigint, sent_at_ms bigint,
                PRIMARY KEY ((room_id, sender_id, client_msg_id), epoch))",
            // A user's stream: one writer at a time holds its lease (a lightweight transaction on a
            // takeover only); positions are given by that writer, contiguous.
            "CREATE TABLE IF NOT EXISTS {ks}.stream_leases (user_id bigint PRIMARY KEY, epoch bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.stream_claims (user_id bigint, epoch bigint, start_pos bigint,
                PRIMARY KEY (user_id, epoch))",
            "CREATE TABLE IF NOT EXISTS {ks}.stream_events (user_id bigint, bucket bigint, pos bigint, epoch bigint,
                kind int, source_id bigint, reference bigint, actor_id bigint, ref_epoch bigint,
                PRIMARY KEY ((user_id, bucket), pos, epoch))",
            "CREATE TABLE IF NOT EXISTS {ks}.stream_buckets (user_id bigint, bucket bigint, PRIMARY KEY (user_id, bucket))",
            // Which position an event got in a stream, so that a write redone after a crash or a
            // lost lease never puts it there twice.
            "CREATE TABLE IF NOT EXISTS {ks}.stream_index (user_id bigint, source_id bigint, kind int,
                reference bigint, actor_id bigint, epoch bigint, pos bigint,
                PRIMARY KEY ((user_id, source_id), kind, reference, actor_id, epoch))",
            // Push jobs, in their user's partition; state 0 pending, 1 claimed, 2 failed.
            "CREATE TABLE IF NOT EXISTS {ks}.push_jobs (user_id bigint, device_id bigint, room_id bigint,
                job_id bigint, state int, due_ms bigint, kind int, count int, last_seq bigint, last_pos bigint,
                sender_id bigint, many_senders boolean, preview text, attempts int, created_at_ms bigint,
                last_error text, PRIMARY KEY (user_id, device_id, room_id, job_id))",
            // When jobs fall due, partitioned by shard (of the user) and time bucket (of the due time).
            "CREATE TABLE IF NOT EXISTS {ks}.push_due (shard int, bucket bigint, due_ms bigint, job_id bigint,
                user_id bigint, device_id bigint, room_id bigint, state int,
                PRIMARY KEY ((shard, bucket), due_ms, job_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.push_due_buckets (shard int, bucket bigint, PRIMARY KEY (shard, bucket))",
            // Jobs given up, kept for inspection until purged.
            "CREATE TABLE IF NOT EXISTS {ks}.push_failed (shard int, failed_at_ms bigint, job_id bigint,
                user_id bigint, device_id bigint, room_id bigint, PRIMARY KEY (shard, failed_at_ms, job_id))",
        ],
    ),
    (
        4,
        "rooms fanned out after the acknowledgement",
        &[
            // Rooms with acknowledged entries not yet in every recipient's stream, by shard of the
            // room. Written USING TIMESTAMP = the entry's seq before the entry, deleted USING
            // TIMESTAMP = the seq fanned out to: a delete removes the row only if no later entry
            // listed it again, in whatever order the two land.
            "CREATE TABLE IF NOT EXISTS {ks}.rooms_behind (shard int, room_id bigint, PRIMARY KEY (shard, room_id))",
        ],
    ),
    (
        5,
        "stored images",
        &[
            // Content-addressed: the id is the first 16 bytes of the SHA-256 of the bytes. The record
            // is written after every chunk, so an image with a record is whole.
            "CREATE TABLE IF NOT EXISTS {ks}.media (media_id blob PRIMARY KEY, format int, width int, height int,
                size bigint, chunk_bytes int, chunks int, created_at_ms bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.media_chunks (media_id blob, idx int, data blob,
                PRIMARY KEY (media_id, idx))",
            "CREATE TABLE IF NOT EXISTS {ks}.media_uploaders (media_id blob, user_id bigint, at_ms bigint,
                PRIMARY KEY (media_id, user_id))",
            // The rooms whose messages show an image (written before the message): their members may
            // read it.
            "CREATE TABLE IF NOT EXISTS {ks}.media_refs (media_id blob, room_id bigint, PRIMARY KEY (media_id, room_id))",
            // Uploads by the hour they came in: where the collector of images never sent looks.
            "CREATE TABLE IF NOT EXISTS {ks}.media_by_hour (hour bigint, media_id blob, PRIMARY KEY (hour, media_id))",
        ],
    ),
    (
        6,
        "profiles, their search index, public images",
        &[
            "CREATE TABLE IF NOT EXISTS {ks}.profiles (user_id bigint PRIMARY KEY, display_name text, bio text,
                avatar blob, birthday text, private boolean)",
            // A row per search key of a user (`Profile::search_keys`), partitioned by the key's first
            // two characters, so that a prefix search reads one partition, in key order.
            "CREATE TABLE IF NOT EXISTS {ks}.profile_search (head text, key text, user_id bigint,
                PRIMARY KEY (head, key, user_id))",
            // Images anyone logged in may read (avatars).
            "CREATE TABLE IF NOT EXISTS {ks}.public_media (media_id blob PRIMARY KEY)",
        ],
    ),
    (
        7,
        "the follow graph and blocks",
        &[
            // A user's follows of others (the truth) and others' follows of the user (their mirror),
            // each over 8 partitions by the other's id; a count row (other = -1) per partition.
            "CREATE TABLE IF NOT EXISTS {ks}.follows_out (user_id bigint, shard int, other bigint, state int,
                version bigint, count bigint, PRIMARY KEY ((user_id, shard), other))",
            "CREATE TABLE IF NOT EXISTS {ks}.follows_in (user_id bigint, shard int, other bigint, state int,
                version bigint, count bigint, PRIMARY KEY ((user_id, shard), other))",
            // Follow changes whose mirror may not be written yet (see store/scylla/graph.rs).
            "CREATE TABLE IF NOT EXISTS {ks}.follows_unsettled (shard int, follower bigint, followee bigint,
                version bigint, at_ms bigint, PRIMARY KEY (shard, follower, followee))",
            // Whom a user blocked, and who blocked a user.
            "CREATE TABLE IF NOT EXISTS {ks}.blocks (user_id bigint, other bigint, PRIMARY KEY (user_id, other))",
            "CREATE TABLE IF NOT EXISTS {ks}.blocked_by (user_id bigint, other bigint, PRIMARY KEY (user_id, other))",
        ],
    ),
    (
        8,
        "posts",
        &[
            // An author's posts, newest first, and a count row (post_id 0) changed with each.
            "CREATE TABLE IF NOT EXISTS {ks}.author_posts (author bigint, post_id bigint, client_post_id text,
                media blob, caption text, lat double, lng double, created_at_ms bigint, count bigint,
                PRIMARY KEY (author, post_id)) WITH CLUSTERING ORDER BY (post_id DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.posts (post_id bigint PRIMARY KEY, author bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.client_posts (author bigint, client_post_id text, post_id bigint,
                PRIMARY KEY (author, client_post_id))",
            // The images posts show, by author: who may see a post may see its images.
            "CREATE TABLE IF NOT EXISTS {ks}.media_authors (media_id blob, author bigint, PRIMARY KEY (media_id, author))",
        ],
    ),
    (
        9,
        "home feeds and their fan-out jobs",
        &[
            "CREATE TABLE IF NOT EXISTS {ks}.home_feeds (user_id bigint, post_id bigint, author bigint,
                PRIMARY KEY (user_id, post_id)) WITH CLUSTERING ORDER BY (post_id DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.fanout_jobs (shard int, post_id bigint, author bigint, after bigint,
                started_at_ms bigint, PRIMARY KEY (shard, post_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.wide_authors (shard int, author bigint, PRIMARY KEY (shard, author))",
        ],
    ),
    (
        10,
        "likes and comments",
        &[
            // A post's likes and comments in the post's partition, each with a count row (key 0).
            "CREATE TABLE IF NOT EXISTS {ks}.post_likes (post_id bigint, user_id bigint, count bigint,
                PRIMARY KEY (post_id, user_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.post_comments (post_id bigint, comment_id bigint, author bigint, text text,
                created_at_ms bigint, count bigint, PRIMARY KEY (post_id, comment_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.client_comments (post_id bigint, author bigint, client_comment_id text,
                comment_id bigint, PRIMARY KEY ((post_id, author), client_comment_id))",
        ],
    ),
    (
        11,
        "activity",
        &[
            // A user's activities, newest first; `pos` is set last, once the stream event is there.
            "CREATE TABLE IF NOT EXISTS {ks}.activities (recipient bigint, activity_id bigint, kind int, actor bigint,
                post_id bigint, comment_id bigint, text text, at_ms bigint, group_id bigint, group_count int,
                group_actors list<bigint>, pos bigint, PRIMARY KEY (recipient, activity_id))
                WITH CLUSTERING ORDER BY (activity_id DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.activity_keys (recipient bigint, dedup_key text, activity_id bigint,
                PRIMARY KEY (recipient, dedup_key))",
            "CREATE TABLE IF NOT EXISTS {ks}.activity_groups (recipient bigint, kind int, post_id bigint,
                group_id bigint, opened_at_ms bigint, count int, actors list<bigint>,
                PRIMARY KEY (recipient, kind, post_id))",
            "CREATE TABLE IF NOT EXISTS {ks}.activity_seen (user_id bigint PRIMARY KEY, pos bigint)",
        ],
    ),
    (
        12,
        "a post's latest likers",
        &[
            // Each like noted with its time in the post's partition, newest first.
            "CREATE TABLE IF NOT EXISTS {ks}.post_recent_likes (post_id bigint, liked_at_ms bigint, user_id bigint,
                PRIMARY KEY (post_id, liked_at_ms, user_id)) WITH CLUSTERING ORDER BY (liked_at_ms DESC, user_id ASC)",
        ],
    ),
    (
        13,
        "how far streams were acknowledged",
        &["CREATE TABLE IF NOT EXISTS {ks}.push_delivered (user_id bigint PRIMARY KEY, up_to_pos bigint)"],
    ),
    (14, "notifications", super::notifications::TABLES),
    (
        15,
        "blocked accounts",
        &["CREATE TABLE IF NOT EXISTS {ks}.account_blocks (user_id bigint PRIMARY KEY, blocked_at_ms bigint)"],
    ),
];

pub(super) async fn migrate(session: &Session, options: &ScyllaOptions) -> Result<(), StoreError> {
    let ks = &options.keyspace;
    let state = session.get_cluster_state();
    let nodes = state.get_nodes_info().len();
    if state.get_keyspace(ks).is_none() && options.replication_factor as usize > nodes {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "keyspace {ks} would keep {} copies of every row, but the cluster has {nodes} node(s): \
                 lower store.scylla_replication_factor or add nodes",
                options.replication_factor
            ),
        ));
    }
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
        options.replication_factor
    );
    run(session, &create).await?;
    run(session, &format!("CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, what text)"))
        .await?;
    let applied: Vec<i32> = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(unavailable)?
        .rows::<(i32,)>()
        .map_err(unavailable)?
        .map(|row| row.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    if let Some(newer) = applied.iter().copied().filter(|v| *v > SCHEMA_VERSION).max() {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!("keyspace {ks} is at schema version {newer}, newer than this tidings knows ({SCHEMA_VERSION})"),
        ));
    }
    for &(version, what, statements) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tracing::info!(keyspace = %ks, version, what, "migrating the keyspace");
        for statement in statements {
            run(session, &statement.replace("{ks}", ks)).await?;
        }
        session
            .query_unpaged(format!("INSERT INTO {ks}.schema_migrations (version, what) VALUES (?, ?)"), (version, what))
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// One schema statement, then the cluster's agreement on the schema before the next.
async fn run(session: &Session, cql: &str) -> Result<(), StoreError> {
    session.query_unpaged(cql, ()).await.map_err(unavailable)?;
    session.await_schema_agreement().await.map_err(unavailable)?;
    Ok(())
}
