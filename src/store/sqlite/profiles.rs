//! Profiles on SQLite: a row per user who set one, and the search index (a row per search key),
//! rewritten in the same transaction as the profile, so the two always agree.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::domain::{Birthday, MediaId, Profile, ProfileChange, UserId};
use crate::store::StoreResult;

/// Version 5 of the schema. Users who signed up before it are put in the index by their username.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    user_id INTEGER PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    bio TEXT NOT NULL DEFAULT '',
    avatar BLOB,
    birthday TEXT,
    private INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS profile_search (
    key TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (key, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS profile_search_by_user ON profile_search (user_id);
INSERT OR IGNORE INTO profile_search (key, user_id) SELECT username, user_id FROM users;
";

/// A new user is found by their username.
pub(super) fn index_new_user(tx: &Transaction<'_>, user: UserId, username: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO profile_search (key, user_id) VALUES (?1, ?2)")?
        .execute(params![crate::domain::search_key(username), user.0 as i64])?;
    Ok(())
}

/// Applies the change and rewrites the user's search keys; `false` for an unknown user.
pub(super) fn change(
    tx: &Transaction<'_>,
    user: UserId,
    change: &ProfileChange,
) -> rusqlite::Result<StoreResult<bool>> {
    let Some(profile) = read(tx, user)? else { return Ok(Ok(false)) };
    let profile = change.apply(profile);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO profiles (user_id, display_name, bio, avatar, birthday, private)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        user.0 as i64,
        profile.display_name,
        profile.bio,
        profile.avatar.map(|a| a.0.to_vec()),
        profile.birthday.map(|b| b.to_string()),
        profile.private
    ])?;
    tx.prepare_cached("DELETE FROM profile_search WHERE user_id = ?1")?.execute([user.0 as i64])?;
    let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO profile_search (key, user_id) VALUES (?1, ?2)")?;
    for key in profile.search_keys() {
        insert.execute(params![key, user.0 as i64])?;
    }
    Ok(Ok(true))
}

/// The user's profile (the defaults if they never set one); `None` for an unknown user.
pub(super) fn read(c: &Connection, user: UserId) -> rusqlite::Result<Option<Profile>> {
    c.prepare_cached(
        "SELECT u.username, p.display_name, p.bio, p.avatar, p.birthday, p.private
         FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE u.user_id = ?1",
    )?
    .query_row([user.0 as i64], |r| {
        let avatar: Option<Vec<u8>> = r.get(3)?;
        let birthday: Option<String> = r.get(4)?;
        Ok(Profile {
            user,
            username: r.get(0)?,
            display_name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            bio: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            avatar: avatar.and_then(|a| <[u8; 16]>::try_from(a.as_slice()).ok()).map(MediaId),
            birthday: birthday.as_deref().and_then(Birthday::parse),
            private: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
        })
    })
    .optional()
}

pub(super) fn read_many(c: &Connection, users: &[UserId]) -> rusqlite::Result<Vec<Profile>> {
    let mut profiles = Vec::with_capacity(users.len());
    for &user in users {
        profiles.extend(read(c, user)?);
    }
    Ok(profiles)
}

/// Users with a key starting with `prefix`, by key.
pub(super) fn search(c: &Connection, prefix: &str, limit: usize) -> rusqlite::Result<Vec<Profile>> {
    // Every key starting with the prefix sorts between the prefix and the prefix followed by the
    // highest code point (keys compare as UTF-8 bytes, which is code point order). Read in key
    // order, so the scan stops early; a user may match by several keys, hence the spare rows.
    let rows: Vec<i64> = c
        .prepare_cached(
            "SELECT user_id FROM profile_search WHERE key >= ?1 AND key < ?1 || char(1114111)
             ORDER BY key, user_id LIMIT ?2",
        )?
        .query_map(params![prefix, (limit * crate::store::SEARCH_ROWS_PER_USER) as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut found: Vec<UserId> = Vec::with_capacity(limit);
    for user in rows.into_iter().map(|u| UserId(u as u64)) {
        if found.len() < limit && !found.contains(&user) {
            found.push(user);
        }
    }
    read_many(c, &found)
}
