//! Push tokens and push preferences on ScyllaDB.
//!
//! A token belongs to one account: `push_token_owners` is claimed by a lightweight transaction when
//! a device registers (rare), so two accounts can never both hold one token. Preferences are plain
//! writes of the user's partition.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{DeviceId, Platform, PushRegistration, RoomId, UserId};
use crate::store::{PushPreferences, PushPrefsStore, StoreError, StoreErrorKind, StoreResult};

pub(super) struct Statements {
    device_live: PreparedStatement,
    token_row: PreparedStatement,
    upsert_token: PreparedStatement,
    delete_token: PreparedStatement,
    claim_owner: PreparedStatement,
    move_owner: PreparedStatement,
    release_owner: PreparedStatement,
    set_mute: PreparedStatement,
    clear_mute: PreparedStatement,
    mute_of: PreparedStatement,
    set_dnd: PreparedStatement,
    set_hide: PreparedStatement,
    prefs_of: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            device_live: p("SELECT revoked FROM {ks}.devices WHERE user_id = ? AND device_id = ?").await?,
            token_row: p("SELECT platform, push_token, app_id, locale, sandbox FROM {ks}.push_tokens
                WHERE user_id = ? AND device_id = ?")
            .await?,
            upsert_token: p("INSERT INTO {ks}.push_tokens (user_id, device_id, platform, push_token, app_id, locale,
                sandbox) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .await?,
            delete_token: p("DELETE FROM {ks}.push_tokens WHERE user_id = ? AND device_id = ?").await?,
            claim_owner: p("INSERT INTO {ks}.push_token_owners (platform, push_token, user_id, device_id)
                VALUES (?, ?, ?, ?) IF NOT EXISTS")
            .await?,
            move_owner: p("UPDATE {ks}.push_token_owners SET device_id = ? WHERE platform = ? AND push_token = ?
                IF user_id = ? AND device_id = ?")
            .await?,
            release_owner: p("DELETE FROM {ks}.push_token_owners WHERE platform = ? AND push_token = ?
                IF user_id = ? AND device_id = ?")
            .await?,
            set_mute: p("INSERT INTO {ks}.room_mutes (user_id, room_id, until_ms) VALUES (?, ?, ?)").await?,
            clear_mute: p("DELETE FROM {ks}.room_mutes WHERE user_id = ? AND room_id = ?").await?,
            mute_of: p("SELECT until_ms FROM {ks}.room_mutes WHERE user_id = ? AND room_id = ?").await?,
            set_dnd: p("UPDATE {ks}.push_prefs SET dnd_until_ms = ? WHERE user_id = ?").await?,
            set_hide: p("UPDATE {ks}.push_prefs SET hide_previews = ? WHERE user_id = ?").await?,
            prefs_of: p("SELECT dnd_until_ms, hide_previews FROM {ks}.push_prefs WHERE user_id = ?").await?,
        })
    }
}

impl ScyllaStore {
    /// Forgets a device's token: its row, and its claim on the token if it still holds it.
    pub(super) async fn forget_push_token(&self, user: UserId, device: DeviceId) -> StoreResult<()> {
        let s = &self.push_prefs;
        let current = self.push_token(user, device).await?;
        self.forget_device_pushes(user, device).await?;
        self.execute(&s.delete_token, (id(user.0), id(device.0))).await?;
        if let Some(r) = current {
            let values = (r.platform.code() as i32, &r.token, id(user.0), id(device.0));
            self.execute(&s.release_owner, values).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PushPrefsStore for ScyllaStore {
    async fn set_push_token(&self, r: PushRegistration) -> StoreResult<()> {
        let s = &self.push_prefs;
        let (user, device) = (id(r.user.0), id(r.device.0));
        let live = self.rows::<(Option<bool>,)>(&s.device_live, (user, device)).await?;
        if !matches!(live.first(), Some((Some(false),))) {
            return Err(StoreError::new(StoreErrorKind::Conflict, "the device is logged out"));
        }
        let platform = r.platform.code() as i32;
        // This device's previous token, if it had another, is given up.
        if let Some(previous) = self.push_token(r.user, r.device).await?
            && (previous.platform, &previous.token) != (r.platform, &r.token)
        {
            let values = (previous.platform.code() as i32, &previous.token, user, device);
            self.execute(&s.release_owner, values).await?;
        }
        let claim = lwt(self.execute(&s.claim_owner, (platform, &r.token, user, device)).await?)?;
        if !claim.applied {
            let (Some(holder_user), Some(holder_device)) = (claim.bigint("user_id"), claim.bigint("device_id")) else {
                return Err(StoreError::new(StoreErrorKind::Corrupt, "a push token's holder is unreadable"));
            };
            if holder_user != user {
                return Err(StoreError::new(StoreErrorKind::Conflict, "this push token is another account's"));
            }
            if holder_device != device {
                // A reinstall: another device of the same user registered it before; it moves here.
                let values = (device, platform, &r.token, user, holder_device);
                if !lwt(self.execute(&s.move_owner, values).await?)?.applied {
                    return Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        "the token changed hands meanwhile; retry",
                    ));
                }
                self.execute(&s.delete_token, (user, holder_device)).await?;
            }
        }
        let values = (user, device, platform, &r.token, &r.app_id, &r.locale, r.sandbox);
        self.execute(&s.upsert_token, values).await?;
        Ok(())
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId) -> StoreResult<()> {
        self.forget_push_token(user, device).await
    }

    async fn push_token(&self, user: UserId, device: DeviceId) -> StoreResult<Option<PushRegistration>> {
        let rows = self
            .rows::<(i32, String, String, String, bool)>(&self.push_prefs.token_row, (id(user.0), id(device.0)))
            .await?;
        let Some((platform, token, app_id, locale, sandbox)) = rows.into_iter().next() else { return Ok(None) };
        let platform = Platform::from_code(platform as i64)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, format!("push platform {platform}")))?;
        Ok(Some(PushRegistration { user, device, platform, token, app_id, locale, sandbox }))
    }

    async fn set_room_mute(&self, user: UserId, room: RoomId, until_ms: i64) -> StoreResult<()> {
        let s = &self.push_prefs;
        match until_ms <= 0 {
            true => self.execute(&s.clear_mute, (id(user.0), id(room.0))).await?,
            false => self.execute(&s.set_mute, (id(user.0), id(room.0), until_ms)).await?,
        };
        Ok(())
    }

    async fn set_do_not_disturb(&self, user: UserId, until_ms: i64) -> StoreResult<()> {
        self.execute(&self.push_prefs.set_dnd, (until_ms.max(0), id(user.0))).await?;
        Ok(())
    }

    async fn set_hide_previews(&self, user: UserId, hide: bool) -> StoreResult<()> {
        self.execute(&self.push_prefs.set_hide, (hide, id(user.0))).await?;
        Ok(())
    }

    async fn push_preferences(&self, user: UserId, room: RoomId) -> StoreResult<PushPreferences> {
        let s = &self.push_prefs;
        let muted = self.rows::<(i64,)>(&s.mute_of, (id(user.0), id(room.0))).await?;
        let prefs = self.rows::<(Option<i64>, Option<bool>)>(&s.prefs_of, (id(user.0),)).await?;
        let (dnd, hide) = prefs.first().copied().unwrap_or((None, None));
        Ok(PushPreferences {
            muted_until_ms: muted.first().map_or(0, |(until,)| *until),
            dnd_until_ms: dnd.unwrap_or(0),
            hide_previews: hide.unwrap_or(false),
        })
    }
}
