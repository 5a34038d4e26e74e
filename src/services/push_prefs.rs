//! A device's push token and the user's notification preferences.
//!
//! Rules: a token is accepted only for an app this server pushes for (`push.allowed_app_ids`); a
//! token another account holds is refused by the store (CONFLICT); only a member mutes a room.

use std::sync::Arc;

use super::PushOp;
use crate::actors::{Hub, ReplyBody};
use crate::domain::{DeviceId, DomainError, DomainResult, PushRegistration, UserId};

pub async fn handle(hub: &Arc<Hub>, me: UserId, device: DeviceId, op: PushOp) -> DomainResult<ReplyBody> {
    match op {
        PushOp::SetToken(target) => {
            if !hub.push.allows_app(&target.app_id) {
                return Err(DomainError::invalid("this server sends no pushes for that app_id"));
            }
            let registration = PushRegistration {
                user: me,
                device,
                platform: target.platform,
                token: target.token,
                app_id: target.app_id,
                locale: target.locale,
                sandbox: target.sandbox,
            };
            hub.store.set_push_token(registration).await?;
        }
        PushOp::ClearToken => hub.store.clear_push_token(me, device).await?,
        PushOp::MuteRoom { room, until_ms } => {
            hub.store.room_summary(room, me).await?.ok_or_else(DomainError::not_a_member)?;
            hub.store.set_room_mute(me, room, until_ms).await?;
        }
        PushOp::SetDoNotDisturb { until_ms } => hub.store.set_do_not_disturb(me, until_ms).await?,
        PushOp::SetHidePreviews { hide } => hub.store.set_hide_previews(me, hide).await?,
    }
    Ok(ReplyBody::Ok)
}
