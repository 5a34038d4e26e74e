//! Accounts and devices on ScyllaDB.
//!
//! Uniqueness and the refresh-token rotation are lightweight transactions (sign-up, refresh and
//! logout: none is on a per-message path); everything else is a plain read or write of one
//! partition.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{DeviceId, UserId};
use crate::store::{
    AccountStore, DeviceInfo, DeviceRecord, NewUser, RefreshRotation, StoreError, StoreErrorKind, StoreResult,
    UserRecord,
};

pub(super) struct Statements {
    insert_user: PreparedStatement,
    claim_name: PreparedStatement,
    delete_user: PreparedStatement,
    name_owner: PreparedStatement,
    user_row: PreparedStatement,
    users_in: PreparedStatement,
    insert_device: PreparedStatement,
    device_row: PreparedStatement,
    rotate: PreparedStatement,
    device_serial: PreparedStatement,
    devices_of: PreparedStatement,
    device_list: PreparedStatement,
    revoke: PreparedStatement,
    set_last_seen: PreparedStatement,
    block: PreparedStatement,
    unblock: PreparedStatement,
    blocked: PreparedStatement,
    last_seen_in: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        let mut device_serial =
            p("SELECT refresh_previous, revoked FROM {ks}.devices WHERE user_id = ? AND device_id = ?").await?;
        // Reads what the last lightweight transaction on the row decided.
        device_serial.set_consistency(Consistency::Serial);
        Ok(Self {
            insert_user: p(
                "INSERT INTO {ks}.users (user_id, username, password_hash, created_at_ms) VALUES (?, ?, ?, ?)",
            )
            .await?,
            claim_name: p("INSERT INTO {ks}.usernames (username, user_id) VALUES (?, ?) IF NOT EXISTS").await?,
            delete_user: p("DELETE FROM {ks}.users WHERE user_id = ?").await?,
            name_owner: p("SELECT user_id FROM {ks}.usernames WHERE username = ?").await?,
            user_row: p("SELECT username, password_hash FROM {ks}.users WHERE user_id = ?").await?,
            users_in: p("SELECT user_id FROM {ks}.users WHERE user_id IN ?").await?,
            insert_device: p("INSERT INTO {ks}.devices (user_id, device_id, name, refresh_hash, refresh_expires_at_ms,
                created_at_ms, revoked) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .await?,
            device_row: p("SELECT name, refresh_hash, refresh_expires_at_ms, created_at_ms, revoked
                FROM {ks}.devices WHERE user_id = ? AND device_id = ?")
            .await?,
            rotate: p("UPDATE {ks}.devices SET refresh_hash = ?, refresh_previous = ?, refresh_expires_at_ms = ?
                WHERE user_id = ? AND device_id = ? IF refresh_hash = ? AND revoked = false")
            .await?,
            device_serial,
            devices_of: p("SELECT device_id, revoked FROM {ks}.devices WHERE user_id = ?").await?,
            device_list: p("SELECT device_id, name, created_at_ms, revoked FROM {ks}.devices WHERE user_id = ?")
                .await?,
            revoke: p("UPDATE {ks}.devices SET revoked = true, refresh_hash = 0x, refresh_previous = null
                WHERE user_id = ? AND device_id = ? IF revoked = false")
            .await?,
            set_last_seen: p("INSERT INTO {ks}.last_seen (user_id, at_ms) VALUES (?, ?)").await?,
            block: p("INSERT INTO {ks}.account_blocks (user_id, blocked_at_ms) VALUES (?, ?)").await?,
            unblock: p("DELETE FROM {ks}.account_blocks WHERE user_id = ?").await?,
            blocked: p("SELECT blocked_at_ms FROM {ks}.account_blocks WHERE user_id = ?").await?,
            last_seen_in: p("SELECT user_id, at_ms FROM {ks}.last_seen WHERE user_id IN ?").await?,
        })
    }
}

#[async_trait]
impl AccountStore for ScyllaStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<()> {
        let s = &self.accounts;
        let values = (id(user.id.0), &user.username, &user.password_hash, user.created_at_ms);
        self.execute(&s.insert_user, values).await?;
        let claimed = self.execute(&s.claim_name, (&user.username, id(user.id.0))).await?;
        // The name is someone's: ours, if this is a retry of a sign-up that did claim it.
        if lwt(claimed)?.applied
            || self.rows::<(i64,)>(&s.name_owner, (&user.username,)).await?.first() == Some(&(id(user.id.0),))
        {
            return self.index_profile(user.id, &super::profiles::username_key(&user.username)).await;
        }
        self.execute(&s.delete_user, (id(user.id.0),)).await?;
        Err(StoreError::new(StoreErrorKind::Conflict, "username taken"))
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let s = &self.accounts;
        let Some(&(user,)) = self.rows::<(i64,)>(&s.name_owner, (username,)).await?.first() else { return Ok(None) };
        let rows = self.rows::<(String, String)>(&s.user_row, (user,)).await?;
        Ok(rows.into_iter().next().map(|(username, password_hash)| UserRecord {
            id: UserId(user as u64),
            username,
            password_hash,
        }))
    }

    async fn existing_users(&self, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = users.iter().map(|u| id(u.0)).collect();
        let found = self.rows::<(i64,)>(&self.accounts.users_in, (ids,)).await?;
        // In the order asked, as SQLite answers.
        Ok(users.into_iter().filter(|u| found.contains(&(id(u.0),))).collect())
    }

    async fn create_device(&self, d: DeviceRecord) -> StoreResult<()> {
        let values = (
            id(d.user.0),
            id(d.device.0),
            &d.name,
            &d.refresh_hash,
            d.refresh_expires_at_ms,
            d.created_at_ms,
            d.revoked,
        );
        self.execute(&self.accounts.insert_device, values).await?;
        Ok(())
    }

    async fn device(&self, user: UserId, device: DeviceId) -> StoreResult<Option<DeviceRecord>> {
        let rows = self
            .rows::<(String, Vec<u8>, i64, i64, bool)>(&self.accounts.device_row, (id(user.0), id(device.0)))
            .await?;
        Ok(rows.into_iter().next().map(|(name, refresh_hash, refresh_expires_at_ms, created_at_ms, revoked)| {
            DeviceRecord { user, device, name, refresh_hash, refresh_expires_at_ms, created_at_ms, revoked }
        }))
    }

    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceInfo>> {
        let rows = self.rows::<(i64, String, i64, Option<bool>)>(&self.accounts.device_list, (id(user.0),)).await?;
        let mut devices: Vec<DeviceInfo> = rows
            .into_iter()
            .map(|(device, name, created_at_ms, revoked)| DeviceInfo {
                device: DeviceId(device as u64),
                name,
                created_at_ms,
                revoked: revoked == Some(true),
            })
            .collect();
        // Clustered by the signed column: ids are below 2^63, so that is their order too.
        devices.sort_unstable_by_key(|d| d.device.0);
        Ok(devices)
    }

    async fn rotate_refresh(
        &self,
        user: UserId,
        device: DeviceId,
        old_hash: Vec<u8>,
        new_hash: Vec<u8>,
        new_expires_at_ms: i64,
    ) -> StoreResult<RefreshRotation> {
        let s = &self.accounts;
        let values = (&new_hash, &old_hash, new_expires_at_ms, id(user.0), id(device.0), &old_hash);
        if lwt(self.execute(&s.rotate, values).await?)?.applied {
            return Ok(RefreshRotation::Rotated);
        }
        let rows = self.rows::<(Option<Vec<u8>>, Option<bool>)>(&s.device_serial, (id(user.0), id(device.0))).await?;
        match rows.first() {
            Some((Some(previous), Some(false))) if *previous == old_hash => {
                let revoked = self.revoke_devices(user, Some(device)).await?;
                Ok(RefreshRotation::Reused { revoked })
            }
            _ => Ok(RefreshRotation::Unknown),
        }
    }

    async fn revoke_devices(&self, user: UserId, only: Option<DeviceId>) -> StoreResult<Vec<DeviceId>> {
        let s = &self.accounts;
        let devices = self.rows::<(i64, Option<bool>)>(&s.devices_of, (id(user.0),)).await?;
        let mut revoked = Vec::new();
        for (device, was_revoked) in devices {
            let device = DeviceId(device as u64);
            if was_revoked == Some(true) || only.is_some_and(|o| o != device) {
                continue;
            }
            if lwt(self.execute(&s.revoke, (id(user.0), id(device.0))).await?)?.applied {
                revoked.push(device);
            }
            // A logged-out device must not be woken by pushes meant for whoever uses the app next.
            self.forget_push_token(user, device).await?;
        }
        revoked.sort_unstable_by_key(|d| d.0);
        Ok(revoked)
    }

    async fn set_account_blocked(&self, user: UserId, at_ms: i64) -> StoreResult<()> {
        match at_ms {
            0 => self.execute(&self.accounts.unblock, (id(user.0),)).await?,
            _ => self.execute(&self.accounts.block, (id(user.0), at_ms)).await?,
        };
        Ok(())
    }

    async fn account_blocked(&self, user: UserId) -> StoreResult<Option<i64>> {
        let rows = self.rows::<(Option<i64>,)>(&self.accounts.blocked, (id(user.0),)).await?;
        Ok(rows.into_iter().next().and_then(|(at,)| at))
    }

    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> StoreResult<()> {
        self.execute(&self.accounts.set_last_seen, (id(user.0), at_ms)).await?;
        Ok(())
    }

    async fn last_seen(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, i64)>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = users.iter().map(|u| id(u.0)).collect();
        let rows = self.rows::<(i64, i64)>(&self.accounts.last_seen_in, (ids,)).await?;
        Ok(users
            .into_iter()
            .filter_map(|u| rows.iter().find(|(seen, _)| *seen == id(u.0)).map(|(_, at)| (u, *at)))
            .collect())
    }
}
