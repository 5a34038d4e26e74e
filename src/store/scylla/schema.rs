//! The keyspace and its versioned schema. Each migration is a list of idempotent CQL statements
//! (`IF NOT EXISTS`); `schema_migrations` records the versions applied, so nodes starting together
//! apply the same statements harmlessly and a node finding a newer version than it knows refuses
//! to start.

use scylla::client::session::Session;

use super::{ScyllaOptions, unavailable};
use crate::store::{StoreError, StoreErrorKind};

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i32 = 2;

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
];

pub(super) async fn migrate(session: &Session, options: &ScyllaOptions) -> Result<(), StoreError> {
    let ks = &options.keyspace;
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
