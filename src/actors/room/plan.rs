//! One plan per verb: what a write would add to a room's log, checked against the room as it is.
//! Plans read the room and change nothing; the actor applies a plan's member change only once
//! the entry is submitted (`RoomActor::append`), so a refused or unqueued write leaves no trace.

use std::collections::HashMap;

use crate::actors::RoomWrite;
use crate::config::LimitsConfig;
use crate::domain::{
    Code, DomainError, DomainResult, EntryBody, MediaId, Role, RoomKind, SYSTEM_USER, TextMessage, UserId, now_ms,
    room_name,
};
use crate::store::Effect;

const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Images in one message (an album, as the big messengers allow).
const MAX_IMAGES_PER_MESSAGE: usize = 10;

/// The room a plan is checked against.
pub(super) struct RoomView<'a> {
    pub kind: RoomKind,
    pub members: &'a HashMap<UserId, Role>,
    pub last_seq: u64,
    pub limits: &'a LimitsConfig,
}

/// A checked write: the entry's body, its effect on earlier entries or the membership, who gets
/// it, and what to answer once it is durable.
#[derive(Debug)]
pub(super) struct Planned {
    pub body: EntryBody,
    pub effect: Effect,
    pub recipients: Vec<UserId>,
    pub on_commit: OnCommit,
    pub change: MemberChange,
}

/// What to answer once an append is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnCommit {
    Sent,
    Ok,
}

/// How a write changes the in-memory member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MemberChange {
    None,
    Add(Vec<UserId>),
    Remove(UserId),
    SetRole(UserId, Role),
}

impl MemberChange {
    pub fn apply(self, members: &mut HashMap<UserId, Role>) {
        match self {
            MemberChange::None => {}
            MemberChange::Add(users) => members.extend(users.into_iter().map(|u| (u, Role::Member))),
            MemberChange::Remove(user) => {
                members.remove(&user);
            }
            MemberChange::SetRole(user, role) => {
                members.insert(user, role);
            }
        }
    }
}

pub(super) fn plan(room: &RoomView, user: UserId, write: RoomWrite) -> DomainResult<Planned> {
    // The app's system messages come from no member; they may only send.
    let role = match (&write, user) {
        (RoomWrite::Send { .. }, SYSTEM_USER) => Role::Member,
        _ => room.role_of(user)?,
    };
    match write {
        RoomWrite::Send { client_msg_id, text, reply_to_seq, media } => {
            send(room, client_msg_id, text, reply_to_seq, media)
        }
        RoomWrite::Edit { seq, text } => edit(room, user, seq, text),
        RoomWrite::Delete { seq } => delete(room, user, role, seq),
        RoomWrite::AddMembers(users) => add_members(room, user, users),
        RoomWrite::RemoveMember(target) => remove_member(room, user, target),
        RoomWrite::Leave => leave(room, user),
        RoomWrite::Rename(name) => rename(room, user, &name),
        RoomWrite::SetRole(target, new_role) => set_role(room, user, role, target, new_role),
    }
}

fn send(
    room: &RoomView,
    client_msg_id: String,
    text: String,
    reply_to_seq: u64,
    media: Vec<MediaId>,
) -> DomainResult<Planned> {
    if media.len() > MAX_IMAGES_PER_MESSAGE {
        return Err(DomainError::invalid(format!("a message has at most {MAX_IMAGES_PER_MESSAGE} images")));
    }
    // An image's caption may be empty.
    if media.is_empty() || !text.is_empty() {
        room.check_text(&text)?;
    }
    if client_msg_id.chars().count() > MAX_CLIENT_MSG_ID_CHARS {
        return Err(DomainError::invalid(format!("client_msg_id is longer than {MAX_CLIENT_MSG_ID_CHARS}")));
    }
    if reply_to_seq != 0 {
        room.check_seq(reply_to_seq)?;
    }
    let body = EntryBody::Text(TextMessage { text, client_msg_id, reply_to_seq, media, ..Default::default() });
    Ok(room.message(body, Effect::None))
}

fn edit(room: &RoomView, user: UserId, seq: u64, text: String) -> DomainResult<Planned> {
    room.check_text(&text)?;
    room.check_seq(seq)?;
    let effect = Effect::Edit { target_seq: seq, editor: user, text: text.clone(), at_ms: now_ms() };
    Ok(room.message(EntryBody::Edited { target_seq: seq, text }, effect))
}

fn delete(room: &RoomView, user: UserId, role: Role, seq: u64) -> DomainResult<Planned> {
    room.check_seq(seq)?;
    let by_moderator = room.kind == RoomKind::Group && role.can_manage();
    let effect = Effect::Delete { target_seq: seq, by: user, by_moderator };
    Ok(room.message(EntryBody::Deleted { target_seq: seq }, effect))
}

fn add_members(room: &RoomView, user: UserId, users: Vec<UserId>) -> DomainResult<Planned> {
    room.require_manager(user)?;
    let mut added: Vec<UserId> = users.into_iter().filter(|u| !room.members.contains_key(u)).collect();
    added.sort_unstable();
    added.dedup();
    if added.is_empty() {
        return Err(DomainError::invalid("everyone named is a member already"));
    }
    let max = room.limits.max_group_members;
    if room.members.len() + added.len() > max {
        return Err(DomainError::invalid(format!("a group has at most {max} members")));
    }
    // That the users exist was checked before the request got here (`services::rooms`).
    let mut recipients = room.member_list();
    recipients.extend_from_slice(&added);
    Ok(Planned {
        body: EntryBody::MembersAdded(added.clone()),
        effect: Effect::AddMembers(added.clone()),
        recipients,
        on_commit: OnCommit::Ok,
        change: MemberChange::Add(added),
    })
}

fn remove_member(room: &RoomView, user: UserId, target: UserId) -> DomainResult<Planned> {
    let my_role = room.require_manager(user)?;
    let target_role = room.role_of(target).map_err(|_| DomainError::not_found("not a member"))?;
    if target == user {
        return Err(DomainError::invalid("use leave to leave a room"));
    }
    if target_role >= my_role {
        return Err(DomainError::forbidden("you may only remove members below your role"));
    }
    // The removed member gets the entry that removes it.
    Ok(room.management(EntryBody::MemberRemoved(target), Effect::RemoveMember(target), MemberChange::Remove(target)))
}

fn leave(room: &RoomView, user: UserId) -> DomainResult<Planned> {
    room.require_group()?;
    Ok(room.management(EntryBody::MemberLeft(user), Effect::RemoveMember(user), MemberChange::Remove(user)))
}

fn rename(room: &RoomView, user: UserId, name: &str) -> DomainResult<Planned> {
    room.require_manager(user)?;
    let name = room_name(name, room.limits.max_room_name_chars)?;
    Ok(room.management(EntryBody::Renamed(name.clone()), Effect::Rename(name), MemberChange::None))
}

fn set_role(room: &RoomView, user: UserId, role: Role, target: UserId, new_role: Role) -> DomainResult<Planned> {
    room.require_group()?;
    if role != Role::Owner {
        return Err(DomainError::forbidden("only the owner may change roles"));
    }
    if new_role == Role::Owner {
        return Err(DomainError::invalid("a room has one owner; choose member or admin"));
    }
    if target == user {
        return Err(DomainError::invalid("the owner's role cannot change"));
    }
    room.role_of(target).map_err(|_| DomainError::not_found("not a member"))?;
    let body = EntryBody::RoleChanged(target, new_role);
    Ok(room.management(body, Effect::SetRole(target, new_role), MemberChange::SetRole(target, new_role)))
}

impl RoomView<'_> {
    fn member_list(&self) -> Vec<UserId> {
        self.members.keys().copied().collect()
    }

    fn role_of(&self, user: UserId) -> DomainResult<Role> {
        self.members.get(&user).copied().ok_or_else(DomainError::not_a_member)
    }

    fn require_group(&self) -> DomainResult<()> {
        match self.kind {
            RoomKind::Group => Ok(()),
            RoomKind::Direct => Err(DomainError::forbidden("direct rooms have exactly their two members")),
        }
    }

    fn require_manager(&self, user: UserId) -> DomainResult<Role> {
        self.require_group()?;
        let role = self.role_of(user)?;
        if role.can_manage() { Ok(role) } else { Err(DomainError::forbidden("only owners and admins may do this")) }
    }

    fn check_text(&self, text: &str) -> DomainResult<()> {
        if text.trim().is_empty() {
            return Err(DomainError::invalid("text is empty"));
        }
        let max = self.limits.max_message_bytes;
        if text.len() > max {
            return Err(DomainError::new(
                Code::PayloadTooLarge,
                format!("text is {} bytes; at most {max}", text.len()),
            ));
        }
        Ok(())
    }

    fn check_seq(&self, seq: u64) -> DomainResult<()> {
        if seq == 0 || seq > self.last_seq {
            return Err(DomainError::not_found(format!("no entry {seq} in this room")));
        }
        Ok(())
    }

    /// A message, edit or delete: to every member, answered with the entry's seq.
    fn message(&self, body: EntryBody, effect: Effect) -> Planned {
        Planned { body, effect, recipients: self.member_list(), on_commit: OnCommit::Sent, change: MemberChange::None }
    }

    /// A change to the room itself: to every member it had before, answered OK.
    fn management(&self, body: EntryBody, effect: Effect, change: MemberChange) -> Planned {
        Planned { body, effect, recipients: self.member_list(), on_commit: OnCommit::Ok, change }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: UserId = UserId(1);
    const ADMIN: UserId = UserId(2);
    const MEMBER: UserId = UserId(3);
    const STRANGER: UserId = UserId(9);

    fn group() -> HashMap<UserId, Role> {
        HashMap::from([(OWNER, Role::Owner), (ADMIN, Role::Admin), (MEMBER, Role::Member)])
    }

    fn check(members: &HashMap<UserId, Role>, user: UserId, write: RoomWrite) -> DomainResult<Planned> {
        let limits = LimitsConfig { max_group_members: 4, ..LimitsConfig::default() };
        plan(&RoomView { kind: RoomKind::Group, members, last_seq: 5, limits: &limits }, user, write)
    }

    fn code(result: DomainResult<Planned>) -> Option<Code> {
        result.err().map(|e| e.code)
    }

    #[test]
    fn each_verb_is_checked_against_roles_and_the_log() {
        let members = group();
        let send = |text: &str, reply| RoomWrite::Send {
            client_msg_id: "c".into(),
            text: text.into(),
            reply_to_seq: reply,
            media: Vec::new(),
        };
        let cases: Vec<(UserId, RoomWrite, Option<Code>)> = vec![
            (MEMBER, send("hi", 0), None),
            (STRANGER, send("hi", 0), Some(Code::NotAMember)),
            (MEMBER, send("   ", 0), Some(Code::InvalidArgument)),
            (MEMBER, send("hi", 6), Some(Code::NotFound)),
            (MEMBER, RoomWrite::Edit { seq: 0, text: "x".into() }, Some(Code::NotFound)),
            (MEMBER, RoomWrite::Delete { seq: 5 }, None),
            (MEMBER, RoomWrite::AddMembers(vec![UserId(4)]), Some(Code::Forbidden)),
            (ADMIN, RoomWrite::AddMembers(vec![MEMBER]), Some(Code::InvalidArgument)),
            (ADMIN, RoomWrite::AddMembers(vec![UserId(4), UserId(5)]), Some(Code::InvalidArgument)),
            (ADMIN, RoomWrite::AddMembers(vec![UserId(4)]), None),
            (ADMIN, RoomWrite::RemoveMember(OWNER), Some(Code::Forbidden)),
            (ADMIN, RoomWrite::RemoveMember(ADMIN), Some(Code::InvalidArgument)),
            (ADMIN, RoomWrite::RemoveMember(STRANGER), Some(Code::NotFound)),
            (ADMIN, RoomWrite::RemoveMember(MEMBER), None),
            (MEMBER, RoomWrite::Leave, None),
            (MEMBER, RoomWrite::Rename("n".into()), Some(Code::Forbidden)),
            (ADMIN, RoomWrite::Rename(" ".into()), Some(Code::InvalidArgument)),
            (ADMIN, RoomWrite::SetRole(MEMBER, Role::Admin), Some(Code::Forbidden)),
            (OWNER, RoomWrite::SetRole(MEMBER, Role::Owner), Some(Code::InvalidArgument)),
            (OWNER, RoomWrite::SetRole(OWNER, Role::Admin), Some(Code::InvalidArgument)),
            (OWNER, RoomWrite::SetRole(MEMBER, Role::Admin), None),
        ];
        for (user, write, expected) in cases {
            let shown = format!("{user} {write:?}");
            assert_eq!(code(check(&members, user, write)), expected, "{shown}");
        }
        assert_eq!(members, group(), "plans change nothing");
    }

    #[test]
    fn a_plan_names_its_recipients_and_its_member_change() {
        let mut members = group();
        let added = check(&members, ADMIN, RoomWrite::AddMembers(vec![UserId(4), UserId(4)])).unwrap();
        assert_eq!(added.change, MemberChange::Add(vec![UserId(4)]));
        assert!(added.recipients.contains(&UserId(4)), "the new member gets the entry that adds it");
        let removed = check(&members, OWNER, RoomWrite::RemoveMember(MEMBER)).unwrap();
        assert!(removed.recipients.contains(&MEMBER), "the removed member gets the entry that removes it");
        assert_eq!(removed.on_commit, OnCommit::Ok);
        removed.change.apply(&mut members);
        assert!(!members.contains_key(&MEMBER));
        let sent = check(
            &members,
            ADMIN,
            RoomWrite::Send { client_msg_id: "c".into(), text: "hi".into(), reply_to_seq: 0, media: Vec::new() },
        );
        assert_eq!(sent.unwrap().on_commit, OnCommit::Sent);
    }

    #[test]
    fn direct_rooms_refuse_membership_changes() {
        let members = HashMap::from([(OWNER, Role::Member), (ADMIN, Role::Member)]);
        let limits = LimitsConfig::default();
        let room = RoomView { kind: RoomKind::Direct, members: &members, last_seq: 1, limits: &limits };
        for write in [RoomWrite::Leave, RoomWrite::AddMembers(vec![MEMBER]), RoomWrite::Rename("x".into())] {
            assert_eq!(code(plan(&room, OWNER, write)), Some(Code::Forbidden));
        }
    }
}
