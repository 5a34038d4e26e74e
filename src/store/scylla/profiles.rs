//! Profiles on ScyllaDB: a row per user who set one (each change writes only the fields it sets,
//! so two devices changing different fields lose neither), and the search index partitioned by
//! the first `SEARCH_MIN_CHARS` characters of each key.
//!
//! No transaction spans a profile and its index rows, so a change writes the new keys first, then
//! the profile, then deletes the keys the profile no longer has. A crash in between leaves extra
//! rows, never a missing one; a search checks what it finds against the profiles and skips users
//! found under a key they no longer have.

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, prepare};
use crate::domain::{Birthday, MediaId, Profile, ProfileChange, UserId, search_key, search_key_head};
use crate::store::{ProfileStore, SEARCH_ROWS_PER_USER, StoreError, StoreResult};

pub(super) struct Statements {
    set_display_name: PreparedStatement,
    set_bio: PreparedStatement,
    set_avatar: PreparedStatement,
    set_birthday: PreparedStatement,
    set_private: PreparedStatement,
    profiles_in: PreparedStatement,
    usernames_in: PreparedStatement,
    index: PreparedStatement,
    unindex: PreparedStatement,
    search: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            set_display_name: p("UPDATE {ks}.profiles SET display_name = ? WHERE user_id = ?").await?,
            set_bio: p("UPDATE {ks}.profiles SET bio = ? WHERE user_id = ?").await?,
            set_avatar: p("UPDATE {ks}.profiles SET avatar = ? WHERE user_id = ?").await?,
            set_birthday: p("UPDATE {ks}.profiles SET birthday = ? WHERE user_id = ?").await?,
            set_private: p("UPDATE {ks}.profiles SET private = ? WHERE user_id = ?").await?,
            profiles_in: p("SELECT user_id, display_name, bio, avatar, birthday, private FROM {ks}.profiles
                WHERE user_id IN ?")
            .await?,
            usernames_in: p("SELECT user_id, username FROM {ks}.users WHERE user_id IN ?").await?,
            index: p("INSERT INTO {ks}.profile_search (head, key, user_id) VALUES (?, ?, ?)").await?,
            unindex: p("DELETE FROM {ks}.profile_search WHERE head = ? AND key = ? AND user_id = ?").await?,
            search: p("SELECT user_id FROM {ks}.profile_search WHERE head = ? AND key >= ? AND key < ? LIMIT ?")
                .await?,
        })
    }
}

impl ScyllaStore {
    /// Puts the user in the search index under these keys (idempotent).
    pub(super) async fn index_profile(&self, user: UserId, keys: &[String]) -> StoreResult<()> {
        let s = &self.profiles;
        try_join_all(keys.iter().map(|key| self.execute(&s.index, (search_key_head(key), key, id(user.0))))).await?;
        Ok(())
    }
}

type ProfileRow = (i64, Option<String>, Option<String>, Option<Vec<u8>>, Option<String>, Option<bool>);

#[async_trait]
impl ProfileStore for ScyllaStore {
    async fn change_profile(&self, user: UserId, change: ProfileChange) -> StoreResult<bool> {
        self.check_open()?;
        let s = &self.profiles;
        let Some(before) = self.profiles(vec![user]).await?.pop() else { return Ok(false) };
        let after = change.apply(before.clone());
        let (old_keys, new_keys) = (before.search_keys(), after.search_keys());
        // Every key of the profile as it will be, the username's too (users who signed up before
        // the index get theirs here).
        self.index_profile(user, &new_keys).await?;
        let user_id = id(user.0);
        let mut writes = Vec::new();
        if let Some(name) = &change.display_name {
            writes.push(self.execute(&s.set_display_name, (name, user_id)).boxed());
        }
        if let Some(bio) = &change.bio {
            writes.push(self.execute(&s.set_bio, (bio, user_id)).boxed());
        }
        if let Some(avatar) = change.avatar {
            writes.push(self.execute(&s.set_avatar, (avatar.map(|a| a.0.to_vec()), user_id)).boxed());
        }
        if let Some(birthday) = change.birthday {
            writes.push(self.execute(&s.set_birthday, (birthday.map(|b| b.to_string()), user_id)).boxed());
        }
        if let Some(private) = change.private {
            writes.push(self.execute(&s.set_private, (private, user_id)).boxed());
        }
        try_join_all(writes).await?;
        let gone = old_keys.iter().filter(|k| !new_keys.contains(k));
        try_join_all(gone.map(|key| self.execute(&s.unindex, (search_key_head(key), key, user_id)))).await?;
        Ok(true)
    }

    async fn profiles(&self, users: Vec<UserId>) -> StoreResult<Vec<Profile>> {
        self.check_open()?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.profiles;
        let ids: Vec<i64> = users.iter().map(|u| id(u.0)).collect();
        let (names, rows) = futures_util::try_join!(
            self.rows::<(i64, String)>(&s.usernames_in, (&ids,)),
            self.rows::<ProfileRow>(&s.profiles_in, (&ids,)),
        )?;
        Ok(names
            .into_iter()
            .map(|(user, username)| {
                let profile = Profile::empty(UserId(user as u64), username);
                match rows.iter().find(|row| row.0 == user) {
                    Some(row) => with_row(profile, row),
                    None => profile,
                }
            })
            .collect())
    }

    async fn search_profiles(&self, prefix: String, limit: usize) -> StoreResult<Vec<Profile>> {
        self.check_open()?;
        let upper = format!("{prefix}{}", char::MAX);
        let values = (search_key_head(&prefix), &prefix, &upper, (limit * SEARCH_ROWS_PER_USER) as i32);
        let rows = self.rows::<(i64,)>(&self.profiles.search, values).await?;
        let mut found: Vec<UserId> = Vec::with_capacity(limit);
        for user in rows.into_iter().map(|(u,)| UserId(u as u64)) {
            if !found.contains(&user) {
                found.push(user);
            }
        }
        let mut profiles = self.profiles(found.clone()).await?;
        // In the index's order, and only those a current key of theirs still finds.
        profiles.retain(|p| p.search_keys().iter().any(|k| k.starts_with(&prefix)));
        profiles.sort_by_key(|p| found.iter().position(|u| *u == p.user));
        profiles.truncate(limit);
        Ok(profiles)
    }
}

fn with_row(mut profile: Profile, row: &ProfileRow) -> Profile {
    let (_, display_name, bio, avatar, birthday, private) = row;
    profile.display_name = display_name.clone().unwrap_or_default();
    profile.bio = bio.clone().unwrap_or_default();
    profile.avatar = avatar.as_deref().and_then(|a| <[u8; 16]>::try_from(a).ok()).map(MediaId);
    profile.birthday = birthday.as_deref().and_then(Birthday::parse);
    profile.private = private.unwrap_or(false);
    profile
}

/// The username's search key (for a new user).
pub(super) fn username_key(username: &str) -> Vec<String> {
    vec![search_key(username)]
}
