//! The store conformance suite: the contract of the domain-level store traits, run against every
//! backend. `store_suite!` instantiates it for a backend given a constructor; the embedded SQLite
//! backend runs here. (ScyllaDB joins with its backend, behind `TIDINGS_SCYLLA_NODES`.)

use std::sync::Arc;

use tidings::domain::{
    DeviceId, EntryBody, Platform, PushKind, PushRegistration, ReceiptKind, Role, RoomEntry, RoomId, RoomKind,
    StreamEvent, TextMessage, UserId,
};
use tidings::store::{
    AccountStore, Append, AppendOutcome, CreateRoomOutcome, DeviceRecord, Effect, HistoryPage, NewRoom, NewUser,
    PushFanout, PushJobEnd, PushJobState, PushJobsListed, PushPreferences, PushPrefsStore, ReceiptWrite, Store,
    StoreErrorKind,
};

pub async fn user<S: AccountStore + ?Sized>(store: &S, id: u64, name: &str) -> UserId {
    store
        .create_user(NewUser { id: UserId(id), username: name.into(), password_hash: "h".into(), created_at_ms: 1 })
        .await
        .unwrap();
    UserId(id)
}

fn entry(room: RoomId, seq: u64, sender: UserId, body: EntryBody) -> RoomEntry {
    RoomEntry { room, seq, id: seq * 10, sender, sent_at_ms: 1000 + seq as i64, body, encoded: Default::default() }
}

fn text(t: &str, client_id: &str) -> EntryBody {
    EntryBody::Text(TextMessage { text: t.into(), client_msg_id: client_id.into(), ..Default::default() })
}

pub async fn group(store: &dyn Store, id: u64, creator: UserId, members: &[UserId]) -> RoomId {
    let room = RoomId(id);
    let outcome = store
        .create_room(NewRoom {
            id: room,
            kind: RoomKind::Group,
            name: "g".into(),
            creator,
            members: members.to_vec(),
            entry: entry(
                room,
                1,
                creator,
                EntryBody::Created { kind: RoomKind::Group, name: "g".into(), members: members.to_vec() },
            ),
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CreateRoomOutcome::Created { .. }));
    room
}

/// The room's writer epoch, claimed now (the writer a test plays).
async fn claim(store: &dyn Store, room: RoomId) -> u64 {
    store.claim_room(room).await.unwrap().expect("the room exists").epoch
}

async fn append(store: &dyn Store, e: RoomEntry, recipients: &[UserId], effect: Effect) -> AppendOutcome {
    let epoch = claim(store, e.room).await;
    store
        .submit_append(Append {
            epoch,
            entry: Arc::new(e),
            recipients: recipients.to_vec(),
            effect,
            push: None,
            revised_preview: None,
        })
        .unwrap()
        .await
        .unwrap()
}

pub async fn accounts(store: &dyn AccountStore) {
    use tidings::store::RefreshRotation::{Reused, Rotated, Unknown};
    let ana = user(store, 1, "ana").await;
    let dup = store
        .create_user(NewUser { id: UserId(2), username: "ana".into(), password_hash: "h".into(), created_at_ms: 1 })
        .await
        .unwrap_err();
    assert_eq!(dup.kind, StoreErrorKind::Conflict);
    assert_eq!(store.user_by_name("ana").await.unwrap().unwrap().id, ana);
    assert!(store.user_by_name("nobody").await.unwrap().is_none());
    assert_eq!(store.existing_users(vec![ana, UserId(99)]).await.unwrap(), vec![ana]);

    let device = DeviceRecord {
        user: ana,
        device: DeviceId(7),
        name: "phone".into(),
        refresh_hash: vec![1],
        refresh_expires_at_ms: 10,
        created_at_ms: 1,
        revoked: false,
    };
    store.create_device(device.clone()).await.unwrap();
    store.create_device(DeviceRecord { device: DeviceId(8), ..device.clone() }).await.unwrap();
    assert_eq!(store.device(ana, DeviceId(7)).await.unwrap().unwrap(), device);
    assert_eq!(store.rotate_refresh(ana, DeviceId(7), vec![9], vec![2], 20).await.unwrap(), Unknown, "wrong old hash");
    assert_eq!(store.rotate_refresh(ana, DeviceId(7), vec![1], vec![2], 20).await.unwrap(), Rotated);
    assert_eq!(store.rotate_refresh(ana, DeviceId(7), vec![2], vec![3], 20).await.unwrap(), Rotated);
    assert_eq!(store.rotate_refresh(ana, DeviceId(7), vec![1], vec![4], 20).await.unwrap(), Unknown, "two back");
    // Device 8's token traded, then presented again: the device is revoked in the same write.
    assert_eq!(store.rotate_refresh(ana, DeviceId(8), vec![1], vec![5], 20).await.unwrap(), Rotated);
    let reused = store.rotate_refresh(ana, DeviceId(8), vec![1], vec![6], 20).await.unwrap();
    assert_eq!(reused, Reused { revoked: vec![DeviceId(8)] });
    assert!(store.device(ana, DeviceId(8)).await.unwrap().unwrap().revoked);
    assert_eq!(store.rotate_refresh(ana, DeviceId(8), vec![5], vec![6], 20).await.unwrap(), Unknown, "revoked");
    assert_eq!(store.revoke_devices(ana, Some(DeviceId(7))).await.unwrap(), vec![DeviceId(7)]);
    assert!(store.device(ana, DeviceId(7)).await.unwrap().unwrap().revoked);
    assert_eq!(store.rotate_refresh(ana, DeviceId(7), vec![3], vec![4], 20).await.unwrap(), Unknown, "revoked");
    assert_eq!(store.revoke_devices(ana, None).await.unwrap(), Vec::<DeviceId>::new());
    let listed = store.devices_of(ana).await.unwrap();
    let summary: Vec<(u64, &str, i64, bool)> =
        listed.iter().map(|d| (d.device.0, d.name.as_str(), d.created_at_ms, d.revoked)).collect();
    assert_eq!(summary, [(7, "phone", 1, true), (8, "phone", 1, true)]);
    assert!(store.devices_of(UserId(99)).await.unwrap().is_empty());

    assert_eq!(store.account_blocked(ana).await.unwrap(), None);
    store.set_account_blocked(ana, 50).await.unwrap();
    assert_eq!(store.account_blocked(ana).await.unwrap(), Some(50));
    store.set_account_blocked(ana, 0).await.unwrap();
    assert_eq!(store.account_blocked(ana).await.unwrap(), None);

    store.set_last_seen(ana, 1234).await.unwrap();
    assert_eq!(store.last_seen(vec![ana]).await.unwrap(), vec![(ana, 1234)]);
}

pub async fn rooms_and_streams(store: Arc<dyn Store>) {
    let s = &*store;
    let (a, b, c) = (user(s, 1, "a").await, user(s, 2, "b").await, user(s, 3, "c").await);

    // Direct rooms are unique per pair, in either order.
    let direct = |id: u64, x: UserId, y: UserId| NewRoom {
        id: RoomId(id),
        kind: RoomKind::Direct,
        name: String::new(),
        creator: x,
        members: vec![x, y],
        entry: entry(
            RoomId(id),
            1,
            x,
            EntryBody::Created { kind: RoomKind::Direct, name: String::new(), members: vec![x, y] },
        ),
    };
    assert!(matches!(s.create_room(direct(100, a, b)).await.unwrap(), CreateRoomOutcome::Created { .. }));
    match s.create_room(direct(101, b, a)).await.unwrap() {
        CreateRoomOutcome::DirectExists(existing) => assert_eq!(existing, RoomId(100)),
        other => panic!("{other:?}"),
    }

    let room = group(s, 200, a, &[a, b]).await;
    let state = s.load_room(room).await.unwrap().unwrap();
    assert_eq!(state.last_seq, 1);
    assert_eq!(state.members.iter().find(|m| m.user == a).unwrap().role, Role::Owner);
    assert!(s.load_room(RoomId(999)).await.unwrap().is_none());

    // Positions: one per recipient, contiguous per user, across rooms.
    let out = append(s, entry(room, 2, a, text("hi", "c1")), &[a, b], Effect::None).await;
    let AppendOutcome::Committed { positions } = out else { panic!("{out:?}") };
    assert_eq!(positions, vec![(a, 3), (b, 3)], "after two Created entries each");
    // A retry with the same client id is a duplicate, whatever seq it was given.
    let dup = append(s, entry(room, 3, a, text("hi", "c1")), &[a, b], Effect::None).await;
    assert_eq!(dup, AppendOutcome::Duplicate { seq: 2, id: 20, sent_at_ms: 1002 });
    // The same seq twice is refused (the fence against two owners).
    let taken = append(s, entry(room, 2, b, text("other", "c2")), &[a, b], Effect::None).await;
    assert_eq!(taken, AppendOutcome::SeqTaken);

    // Membership effects apply atomically with their entry.
    append(s, entry(room, 4, a, EntryBody::MembersAdded(vec![c])), &[a, b, c], Effect::AddMembers(vec![c])).await;
    assert_eq!(s.load_room(room).await.unwrap().unwrap().members.len(), 3);
    assert_eq!(s.contacts_of(c).await.unwrap().len(), 2);
    append(s, entry(room, 5, a, EntryBody::MemberRemoved(b)), &[a, b, c], Effect::RemoveMember(b)).await;
    assert!(s.room_summary(room, b).await.unwrap().is_none(), "b is out");
    assert_eq!(s.rooms_of(b).await.unwrap().len(), 1, "b keeps only the direct room");

    // Edits and deletes: only standing messages; edits by the sender; deletes by the sender or a moderator.
    let edit = |seq, editor| Effect::Edit { target_seq: 2, editor, text: "hey".into(), at_ms: 5 + seq as i64 };
    let body = |seq| entry(room, seq, a, EntryBody::Edited { target_seq: 2, text: "hey".into() });
    assert_eq!(append(s, body(6), &[a, c], edit(6, c)).await, AppendOutcome::NotAllowed);
    assert!(matches!(append(s, body(7), &[a, c], edit(7, a)).await, AppendOutcome::Committed { .. }));
    let missing = Effect::Edit { target_seq: 42, editor: a, text: "x".into(), at_ms: 1 };
    assert_eq!(append(s, body(8), &[a, c], missing).await, AppendOutcome::TargetNotFound);
    let del = |seq, by, by_moderator| {
        (entry(room, seq, by, EntryBody::Deleted { target_seq: 2 }), Effect::Delete { target_seq: 2, by, by_moderator })
    };
    let (e, eff) = del(9, c, false);
    assert_eq!(append(s, e, &[a, c], eff).await, AppendOutcome::NotAllowed);
    let (e, eff) = del(10, c, true);
    assert!(matches!(append(s, e, &[a, c], eff).await, AppendOutcome::Committed { .. }));
    let (e, eff) = del(11, a, false);
    assert_eq!(append(s, e, &[a, c], eff).await, AppendOutcome::TargetNotFound, "already deleted");

    // Streams replay entries in their current state.
    let events = s.events_after(a, 0, 100).await.unwrap();
    let positions: Vec<u64> = events.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
    let message = events.iter().find_map(|(_, e)| match e {
        StreamEvent::Entry(en) if en.seq == 2 && en.room == room => Some(en.clone()),
        _ => None,
    });
    match &message.unwrap().body {
        EntryBody::Text(t) => assert!(t.deleted && t.text.is_empty() && t.edited_at_ms > 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.stream_head(a).await.unwrap(), *positions.last().unwrap());
    assert_eq!(s.events_after(a, 2, 2).await.unwrap().iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![3, 4]);

    // Receipts move forward only and reach the recipients' streams.
    let receipt = |up_to_seq, kind| ReceiptWrite { room, user: c, kind, up_to_seq, recipients: vec![a, c] };
    let moved = s.set_receipt(receipt(4, ReceiptKind::Read)).await.unwrap().unwrap();
    assert_eq!(moved.len(), 2);
    assert!(s.set_receipt(receipt(3, ReceiptKind::Read)).await.unwrap().is_none(), "never backwards");
    assert!(s.set_receipt(receipt(4, ReceiptKind::Delivered)).await.unwrap().is_none(), "read implies delivered");
    let last = s.events_after(a, 0, 1000).await.unwrap().pop().unwrap().1;
    assert!(matches!(last, StreamEvent::Receipt(r) if r.user == c && r.up_to_seq == 4 && r.kind == ReceiptKind::Read));

    // History pages in ascending seq.
    let (latest, more) = s.history(room, HistoryPage::Latest { limit: 3 }).await.unwrap();
    assert_eq!(latest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 7, 10]);
    assert!(more);
    let (before, _) = s.history(room, HistoryPage::Before { seq: 5, limit: 10 }).await.unwrap();
    assert_eq!(before.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 4]);
    let (after, more) = s.history(room, HistoryPage::After { seq: 5, limit: 10 }).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7, 10]);
    assert!(!more);

    // Unread counts: messages from others after the read marker.
    append(s, entry(room, 12, a, text("one", "u1")), &[a, c], Effect::None).await;
    append(s, entry(room, 13, a, text("two", "u2")), &[a, c], Effect::None).await;
    let summary = s.room_summary(room, c).await.unwrap().unwrap();
    assert_eq!((summary.unread_count, summary.read_up_to_seq, summary.last_seq), (2, 4, 13));
    assert_eq!(s.room_summary(room, a).await.unwrap().unwrap().unread_count, 0);
}

/// Appends submitted in seq order land in every recipient's stream in seq order, even when many
/// are in flight at once.
pub async fn ordered_submission(store: Arc<dyn Store>) {
    let s = &*store;
    let (a, b) = (user(s, 1, "a").await, user(s, 2, "b").await);
    let room = group(s, 300, a, &[a, b]).await;
    let epoch = claim(s, room).await;
    let mut pending = Vec::new();
    for seq in 2..=500u64 {
        let e = Arc::new(entry(room, seq, a, text(&format!("m{seq}"), &format!("c{seq}"))));
        pending.push(
            s.submit_append(Append {
                epoch,
                entry: e,
                recipients: vec![a, b],
                effect: Effect::None,
                push: None,
                revised_preview: None,
            })
            .unwrap(),
        );
    }
    for p in pending {
        assert!(matches!(p.await.unwrap(), AppendOutcome::Committed { .. }));
    }
    let events = s.events_after(b, 0, 1000).await.unwrap();
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, e)| match e {
            StreamEvent::Entry(en) => en.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
}

async fn device<S: AccountStore + ?Sized>(store: &S, user: UserId, id: u64) -> DeviceId {
    let record = DeviceRecord {
        user,
        device: DeviceId(id),
        name: "phone".into(),
        refresh_hash: vec![1],
        refresh_expires_at_ms: i64::MAX,
        created_at_ms: 1,
        revoked: false,
    };
    store.create_device(record).await.unwrap();
    DeviceId(id)
}

fn registration(user: UserId, device: DeviceId, platform: Platform, token: &str) -> PushRegistration {
    PushRegistration {
        user,
        device,
        platform,
        token: token.into(),
        app_id: "app".into(),
        locale: "en".into(),
        sandbox: false,
    }
}

async fn append_pushed(store: &dyn Store, e: RoomEntry, recipients: &[UserId], push_to: &[UserId]) -> AppendOutcome {
    let push = PushFanout {
        users: push_to.to_vec(),
        kind: PushKind::Message,
        preview: format!("preview {}", e.seq),
        due_at_ms: 0,
        platforms: Platform::ALL.to_vec(),
    };
    let epoch = claim(store, e.room).await;
    store
        .submit_append(Append {
            epoch,
            entry: Arc::new(e),
            recipients: recipients.to_vec(),
            effect: Effect::None,
            push: Some(push),
            revised_preview: None,
        })
        .unwrap()
        .await
        .unwrap()
}

/// Push tokens and preferences: a token belongs to one account (a reinstall on another device of
/// the same user moves it; another account is refused), a logged-out device registers nothing, and
/// the preferences read back as set.
pub async fn push_preferences<S: AccountStore + PushPrefsStore + ?Sized>(s: &S) {
    let (ana, bob) = (user(s, 1, "ana").await, user(s, 2, "bob").await);
    let (old_phone, new_phone) = (device(s, ana, 10).await, device(s, ana, 11).await);
    let bobs = device(s, bob, 20).await;
    s.set_push_token(registration(ana, old_phone, Platform::Ios, "tok-a")).await.unwrap();
    assert_eq!(s.push_token(ana, old_phone).await.unwrap().unwrap().token, "tok-a");
    let stolen = s.set_push_token(registration(bob, bobs, Platform::Ios, "tok-a")).await.unwrap_err();
    assert_eq!(stolen.kind, StoreErrorKind::Conflict, "another account's token");
    assert!(s.push_token(bob, bobs).await.unwrap().is_none());
    // The same user reinstalled: the token moves to the new device.
    s.set_push_token(registration(ana, new_phone, Platform::Ios, "tok-a")).await.unwrap();
    assert!(s.push_token(ana, old_phone).await.unwrap().is_none(), "the old device gave it up");
    assert_eq!(s.push_token(ana, new_phone).await.unwrap().unwrap().token, "tok-a");
    // A new token for a device frees its old one.
    s.set_push_token(registration(ana, new_phone, Platform::Ios, "tok-b")).await.unwrap();
    s.set_push_token(registration(bob, bobs, Platform::Ios, "tok-a")).await.unwrap();
    assert_eq!(s.push_token(bob, bobs).await.unwrap().unwrap().token, "tok-a");
    // Clearing, and logging out, free a token too.
    s.clear_push_token(ana, new_phone).await.unwrap();
    assert!(s.push_token(ana, new_phone).await.unwrap().is_none());
    s.revoke_devices(bob, None).await.unwrap();
    assert!(s.push_token(bob, bobs).await.unwrap().is_none());
    let gone = s.set_push_token(registration(bob, bobs, Platform::Ios, "tok-c")).await.unwrap_err();
    assert_eq!(gone.kind, StoreErrorKind::Conflict, "a logged-out device");
    s.set_push_token(registration(ana, old_phone, Platform::Ios, "tok-a")).await.unwrap();

    let room = RoomId(77);
    assert_eq!(s.push_preferences(ana, room).await.unwrap(), PushPreferences::default());
    s.set_room_mute(ana, room, 5_000).await.unwrap();
    s.set_do_not_disturb(ana, 9_000).await.unwrap();
    s.set_hide_previews(ana, true).await.unwrap();
    let set = PushPreferences { muted_until_ms: 5_000, dnd_until_ms: 9_000, hide_previews: true };
    assert_eq!(s.push_preferences(ana, room).await.unwrap(), set);
    assert_eq!(s.push_preferences(ana, RoomId(78)).await.unwrap().muted_until_ms, 0, "per room");
    s.set_room_mute(ana, room, 0).await.unwrap();
    s.set_do_not_disturb(ana, 0).await.unwrap();
    let unmuted = s.push_preferences(ana, room).await.unwrap();
    assert_eq!((unmuted.muted_until_ms, unmuted.dnd_until_ms, unmuted.hide_previews), (0, 0, true));
}

/// The push queue as an operator sees it: queued jobs by due time, failed ones newest first with
/// their last error; a failed job retried (due now, its attempts counted from 0) or dropped, and a
/// pending one dropped.
pub async fn push_queue_inspection(store: Arc<dyn Store>) {
    let s = &*store;
    let ana = user(s, 1, "ana").await;
    let bob = user(s, 2, "bob").await;
    let (phone, tablet) = (device(s, bob, 10).await, device(s, bob, 11).await);
    s.set_push_token(registration(bob, phone, Platform::Ios, "tok-phone")).await.unwrap();
    s.set_push_token(registration(bob, tablet, Platform::Android, "tok-tablet")).await.unwrap();
    let room = group(s, 100, ana, &[ana, bob]).await;
    let list = |which, limit| async move { s.list_push_jobs(which, limit).await.unwrap() };
    assert!(list(PushJobsListed::Queued, 10).await.is_empty());
    assert!(list(PushJobsListed::Failed, 10).await.is_empty());

    append_pushed(s, entry(room, 2, ana, text("hi", "c2")), &[ana, bob], &[bob]).await;
    let queued = list(PushJobsListed::Queued, 10).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    for job in &queued {
        assert_eq!((job.user, job.room, job.kind, job.count), (bob, room, PushKind::Message, 1));
        assert_eq!((job.state, job.attempts, job.due_ms, job.last_error.as_str()), (PushJobState::Pending, 0, 0, ""));
    }
    let mut devices: Vec<DeviceId> = queued.iter().map(|j| j.device).collect();
    devices.sort();
    assert_eq!(devices, [phone, tablet]);

    // The phone's push is retried, then given up; the tablet's is refused at once.
    let jobs = s.claim_push_jobs(10, 60_000, 10).await.unwrap();
    let on = |device| jobs.iter().find(|j| j.device == device).unwrap().clone();
    let (phone_job, tablet_job) = (on(phone), on(tablet));
    let leased = list(PushJobsListed::Queued, 10).await;
    assert!(leased.iter().all(|j| (j.state, j.due_ms) == (PushJobState::Claimed, 60_010)), "{leased:?}");
    s.finish_push_job(phone_job.clone(), PushJobEnd::Retry { at_ms: 1_000, error: "503 unavailable".into() })
        .await
        .unwrap();
    let waiting = list(PushJobsListed::Queued, 10).await;
    assert_eq!(waiting.len(), 2);
    assert_eq!((waiting[0].id, waiting[0].due_ms, waiting[0].attempts), (phone_job.id, 1_000, 1), "due first");
    assert_eq!(waiting[0].last_error, "503 unavailable");
    assert_eq!(list(PushJobsListed::Queued, 1).await.len(), 1, "limited");
    s.finish_push_job(tablet_job.clone(), PushJobEnd::Failed { reason: "400 InvalidArgument".into() }).await.unwrap();
    // Failures are ordered by the wall clock's milliseconds: let the next one fail later.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = s.claim_push_jobs(2_000, 60_000, 10).await.unwrap();
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), [phone_job.id]);
    s.finish_push_job(again[0].clone(), PushJobEnd::Failed { reason: "gave up after 2 attempts: 503".into() })
        .await
        .unwrap();
    assert!(list(PushJobsListed::Queued, 10).await.is_empty());
    let failed = list(PushJobsListed::Failed, 10).await;
    let seen: Vec<_> = failed.iter().map(|j| (j.id, j.state, j.attempts, j.last_error.as_str())).collect();
    assert_eq!(
        seen,
        [
            (phone_job.id, PushJobState::Failed, 2, "gave up after 2 attempts: 503"),
            (tablet_job.id, PushJobState::Failed, 1, "400 InvalidArgument"),
        ],
        "the newest failure first"
    );
    assert_eq!(list(PushJobsListed::Failed, 1).await.len(), 1, "limited");

    // A retry: due at once, attempts from 0, the same id (the provider's idempotency key).
    assert!(!s.retry_failed_push(ana, phone_job.id, 5_000).await.unwrap(), "not ana's job");
    assert!(!s.retry_failed_push(bob, 404, 5_000).await.unwrap(), "no such job");
    assert!(s.retry_failed_push(bob, phone_job.id, 5_000).await.unwrap());
    assert!(!s.retry_failed_push(bob, phone_job.id, 5_000).await.unwrap(), "no longer failed");
    let retried = list(PushJobsListed::Queued, 10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].id, retried[0].state, retried[0].due_ms, retried[0].attempts),
        (phone_job.id, PushJobState::Claimed, 5_000, 0)
    );
    assert_eq!(list(PushJobsListed::Failed, 10).await.iter().map(|j| j.id).collect::<Vec<_>>(), [tablet_job.id]);
    assert!(s.claim_push_jobs(4_999, 60_000, 10).await.unwrap().is_empty(), "due at the retry's time");
    let resent = s.claim_push_jobs(5_000, 60_000, 10).await.unwrap();
    assert_eq!(resent.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), [(phone_job.id, 0)]);
    assert_eq!(resent[0].token, "tok-phone");
    s.finish_push_job(resent[0].clone(), PushJobEnd::Sent).await.unwrap();

    // A failed job dropped is gone, with nothing left to purge.
    assert!(!s.drop_push_job(ana, tablet_job.id).await.unwrap(), "not ana's job");
    assert!(s.drop_push_job(bob, tablet_job.id).await.unwrap());
    assert!(!s.drop_push_job(bob, tablet_job.id).await.unwrap(), "dropped already");
    assert!(list(PushJobsListed::Failed, 10).await.is_empty());
    assert_eq!(s.purge_failed_pushes(i64::MAX).await.unwrap(), 0);

    // A pending job dropped is not sent; the other device's is.
    append_pushed(s, entry(room, 3, ana, text("more", "c3")), &[ana, bob], &[bob]).await;
    let pending = list(PushJobsListed::Queued, 10).await;
    let phones = pending.iter().find(|j| j.device == phone).unwrap();
    assert!(s.drop_push_job(bob, phones.id).await.unwrap());
    let sent = s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap();
    assert_eq!(sent.iter().map(|j| j.device).collect::<Vec<_>>(), [tablet]);
}

/// Stream epochs: stable (and not empty) until rotated; a rotation gives every stream a new one.
pub async fn stream_epochs(store: Arc<dyn Store>) {
    let s = &*store;
    let a = user(s, 1, "a").await;
    let first = s.stream_epoch(a).await.unwrap();
    assert!(!first.is_empty());
    assert_eq!(s.stream_epoch(a).await.unwrap(), first);
    let rotated = s.rotate_stream_epochs().await.unwrap();
    assert_ne!(rotated, first);
    assert_eq!(s.stream_epoch(a).await.unwrap(), rotated);
}

/// Ownership: a writer whose room another writer claimed since cannot append, whatever seq it
/// uses; the new writer continues from the state its claim returned.
pub async fn fencing(store: Arc<dyn Store>) {
    let s = &*store;
    let a = user(s, 1, "a").await;
    let room = group(s, 9, a, &[a]).await;
    assert!(s.claim_room(RoomId(404)).await.unwrap().is_none(), "no such room");
    let old = claim(s, room).await;
    let sent = |epoch, seq: u64, text_: &str| Append {
        epoch,
        entry: Arc::new(entry(room, seq, a, text(text_, &format!("{text_}{seq}")))),
        recipients: vec![a],
        effect: Effect::None,
        push: None,
        revised_preview: None,
    };
    let first = s.submit_append(sent(old, 2, "old")).unwrap().await.unwrap();
    assert!(matches!(first, AppendOutcome::Committed { .. }));
    let claim = s.claim_room(room).await.unwrap().unwrap();
    let (state, new) = (claim.state, claim.epoch);
    assert!(new > old, "a claim moves the epoch on");
    assert_eq!(state.last_seq, 2, "the new writer sees everything the old one committed");
    for seq in [3, 4, 100] {
        let refused = s.submit_append(sent(old, seq, "stale")).unwrap().await.unwrap();
        assert_eq!(refused, AppendOutcome::Fenced, "seq {seq}");
    }
    let next = s.submit_append(sent(new, 3, "new")).unwrap().await.unwrap();
    assert!(matches!(next, AppendOutcome::Committed { .. }));
    let (entries, _) = s.history(room, HistoryPage::After { seq: 0, limit: 10 }).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let streamed = s.events_after(a, 0, 10).await.unwrap();
    assert_eq!(streamed.len(), 3, "nothing of the fenced writer reached a stream");
}

/// Push tokens and the push queue: queued with the append, merged per device and room, leased,
/// finished, cancelled by receipts and acks, and forgotten with dead tokens and logouts.
pub async fn push_queue(store: Arc<dyn Store>) {
    let s = &*store;
    let ana = user(s, 1, "ana").await;
    let bob = user(s, 2, "bob").await;
    let (phone, tablet) = (device(s, bob, 10).await, device(s, bob, 11).await);
    s.set_push_token(registration(bob, phone, Platform::Ios, "tok-phone")).await.unwrap();
    s.set_push_token(registration(bob, tablet, Platform::Android, "tok-tablet")).await.unwrap();
    assert_eq!(s.push_token(bob, phone).await.unwrap().unwrap().token, "tok-phone");
    let room = group(s, 100, ana, &[ana, bob]).await;

    // Three messages: one pending job per device, merged.
    for seq in 2..=4 {
        append_pushed(s, entry(room, seq, ana, text("hi", &format!("c{seq}"))), &[ana, bob], &[bob]).await;
    }
    assert_eq!(s.users_with_pending_pushes().await.unwrap(), vec![bob]);
    let jobs = s.claim_push_jobs(10, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!((job.count, job.last_seq, job.sender, job.preview.as_str()), (3, 4, ana, "preview 4"));
        assert_eq!(job.attempts, 0);
    }
    let ios = jobs.iter().find(|j| j.platform == Platform::Ios).unwrap().clone();
    let android = jobs.iter().find(|j| j.platform == Platform::Android).unwrap().clone();
    assert_eq!((ios.token.as_str(), android.token.as_str()), ("tok-phone", "tok-tablet"));
    assert!(s.claim_push_jobs(20, 60_000, 10).await.unwrap().is_empty(), "leased jobs are not claimed again");

    // A message while the jobs are leased starts new pending jobs rather than changing sent ones.
    append_pushed(s, entry(room, 5, ana, text("more", "c5")), &[ana, bob], &[bob]).await;
    let context = s.push_context(ios.clone()).await.unwrap();
    assert_eq!(context.sender_name, "ana");
    assert_eq!(context.badge, 4, "four unread messages");
    assert!(context.member);
    assert_eq!(context.stream_delivered_up_to_pos, 0, "no device acknowledged anything yet");

    s.finish_push_job(ios.clone(), PushJobEnd::Sent).await.unwrap();
    s.finish_push_job(android.clone(), PushJobEnd::Retry { at_ms: 1_000, error: "503".into() }).await.unwrap();
    let again = s.claim_push_jobs(2_000, 60_000, 10).await.unwrap();
    assert_eq!(again.len(), 3, "the retried job and the two new ones: {again:?}");
    let retried = again.iter().find(|j| j.id == android.id).unwrap();
    assert_eq!(retried.attempts, 1);
    assert_eq!(s.next_push_due().await.unwrap(), Some(62_000));

    // A lease that runs out (the sender crashed) makes the job claimable again, same id.
    let reclaimed = s.claim_push_jobs(62_000, 60_000, 10).await.unwrap();
    assert_eq!(reclaimed.iter().map(|j| j.id).collect::<Vec<_>>().len(), 3);
    for job in reclaimed {
        s.finish_push_job(job, PushJobEnd::Dropped).await.unwrap();
    }
    assert_eq!(s.next_push_due().await.unwrap(), None);

    // A read receipt cancels pending jobs it covers; an ack of the stream does too.
    append_pushed(s, entry(room, 6, ana, text("r", "c6")), &[ana, bob], &[bob]).await;
    let receipt = ReceiptWrite { room, user: bob, kind: ReceiptKind::Read, up_to_seq: 6, recipients: vec![bob] };
    s.set_receipt(receipt).await.unwrap();
    assert!(s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap().is_empty(), "read on another device");
    let positions = match append_pushed(s, entry(room, 7, ana, text("a", "c7")), &[ana, bob], &[bob]).await {
        AppendOutcome::Committed { positions } => positions,
        other => panic!("{other:?}"),
    };
    let bob_pos = positions.iter().find(|(u, _)| *u == bob).unwrap().1;
    assert_eq!(s.cancel_delivered_pushes(bob, bob_pos - 1).await.unwrap(), 2, "not yet delivered");
    assert_eq!(s.cancel_delivered_pushes(bob, bob_pos).await.unwrap(), 0);
    // An ack that comes before the push of what it covers is queued (on ScyllaDB an entry reaches
    // streams before its pushes are queued): the job's context says it was delivered. A later ack
    // of less does not take that back.
    assert_eq!(s.cancel_delivered_pushes(bob, bob_pos + 1).await.unwrap(), 0);
    assert_eq!(s.cancel_delivered_pushes(bob, bob_pos - 1).await.unwrap(), 0);

    // A dead token is forgotten with its jobs, unless the device registered a new one meanwhile.
    append_pushed(s, entry(room, 8, ana, text("d", "c8")), &[ana, bob], &[bob]).await;
    let jobs = s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap();
    let ios = jobs.iter().find(|j| j.platform == Platform::Ios).unwrap().clone();
    let android = jobs.iter().find(|j| j.platform == Platform::Android).unwrap().clone();
    assert_eq!(ios.last_pos, bob_pos + 1);
    let context = s.push_context(ios.clone()).await.unwrap();
    assert_eq!(context.stream_delivered_up_to_pos, bob_pos + 1, "acknowledged before it was queued");
    s.set_push_token(registration(bob, tablet, Platform::Android, "tok-tablet-2")).await.unwrap();
    let dead = |job: &tidings::store::PushJob| PushJobEnd::TokenDead { token: job.token.clone(), reason: "410".into() };
    s.finish_push_job(ios.clone(), dead(&ios)).await.unwrap();
    s.finish_push_job(android.clone(), dead(&android)).await.unwrap();
    assert!(s.push_token(bob, phone).await.unwrap().is_none(), "the dead token is gone");
    assert_eq!(s.push_token(bob, tablet).await.unwrap().unwrap().token, "tok-tablet-2", "the new token stays");

    // A job given up is kept (not claimable) until purged.
    append_pushed(s, entry(room, 100, ana, text("f", "c100")), &[ana, bob], &[bob]).await;
    let failing = s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap();
    assert_eq!(failing.len(), 1, "only the Android device has a token now");
    s.finish_push_job(failing[0].clone(), PushJobEnd::Failed { reason: "400 BadTopic".into() }).await.unwrap();
    assert!(s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap().is_empty(), "failed jobs are not retried");
    assert_eq!(s.purge_failed_pushes(0).await.unwrap(), 0, "kept until its time");
    assert_eq!(s.purge_failed_pushes(i64::MAX).await.unwrap(), 1);

    // Mute and do-not-disturb are in the context; a revoked device loses its token.
    s.set_room_mute(bob, room, 5_000).await.unwrap();
    s.set_do_not_disturb(bob, 6_000).await.unwrap();
    append_pushed(s, entry(room, 101, ana, text("m", "c101")), &[ana, bob], &[bob]).await;
    let job = s.claim_push_jobs(i64::MAX / 2, 1, 10).await.unwrap().pop().unwrap();
    let context = s.push_context(job).await.unwrap();
    assert_eq!((context.muted_until_ms, context.dnd_until_ms), (5_000, 6_000));
    s.revoke_devices(bob, Some(tablet)).await.unwrap();
    assert!(s.push_token(bob, tablet).await.unwrap().is_none());
    let err = s.set_push_token(registration(bob, tablet, Platform::Android, "t")).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Conflict, "a logged-out device cannot register");
    // A token moves to another device of the same user (a reinstall), never to another user's.
    let other = device(s, ana, 12).await;
    s.set_push_token(registration(bob, phone, Platform::Ios, "shared")).await.unwrap();
    let taken = s.set_push_token(registration(ana, other, Platform::Ios, "shared")).await.unwrap_err();
    assert_eq!(taken.kind, StoreErrorKind::Conflict, "another account's token is not taken over");
    assert!(s.push_token(bob, phone).await.unwrap().is_some());
    let reinstall = device(s, bob, 13).await;
    s.set_push_token(registration(bob, reinstall, Platform::Ios, "shared")).await.unwrap();
    assert!(s.push_token(bob, phone).await.unwrap().is_none());
    assert!(s.push_token(bob, reinstall).await.unwrap().is_some());
}

/// Notifications: recorded once per recipient and key (a retry answers the first), read back from
/// the stream, and pushed under their own pseudo-room until a device acknowledges past them.
pub async fn notifications(store: Arc<dyn Store>) {
    use tidings::domain::{NOTIFICATION_PUSH_ROOM, NewNotification, NotificationPush, PushKind};
    let s = &*store;
    let bob = user(s, 2, "bob").await;
    let phone = device(s, bob, 10).await;
    s.set_push_token(registration(bob, phone, Platform::Ios, "tok-phone")).await.unwrap();
    let new = |key: &str, title: &str| NewNotification {
        recipient: bob,
        title: title.into(),
        body: "body".into(),
        data: [("order".to_owned(), "42".to_owned())].into(),
        at_ms: 5,
        dedup_key: key.into(),
    };
    let fanout = || PushFanout {
        users: vec![bob],
        kind: PushKind::Notification,
        preview: String::new(),
        due_at_ms: 10,
        platforms: vec![Platform::Ios],
    };
    let first = s.record_notification(new("k1", "Shipped"), Some(fanout())).await.unwrap();
    assert!(first.fresh);
    assert_eq!(first.pos, 1);
    let retry = s.record_notification(new("k1", "Shipped again?"), Some(fanout())).await.unwrap();
    assert!(!retry.fresh);
    assert_eq!((retry.pos, &retry.notification), (first.pos, &first.notification), "the first, unchanged");
    let second = s.record_notification(new("k2", "Delivered"), Some(fanout())).await.unwrap();
    assert_eq!((second.pos, second.fresh), (2, true));

    let events = s.events_after(bob, 0, 10).await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0].1 {
        StreamEvent::Notification(n) => assert_eq!(**n, first.notification),
        other => panic!("expected a notification, got {other:?}"),
    }
    assert_eq!(first.notification.data.get("order").map(String::as_str), Some("42"));

    // One job for the burst, saying the newest; room-less, so always "a member".
    let jobs = s.claim_push_jobs(10, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!((job.room, job.kind, job.count, job.last_pos), (NOTIFICATION_PUSH_ROOM, PushKind::Notification, 2, 2));
    assert_eq!(NotificationPush::decode(&job.preview).title, "Delivered");
    let context = s.push_context(job.clone()).await.unwrap();
    assert!(context.member);
    s.finish_push_job(job.clone(), PushJobEnd::Sent).await.unwrap();

    // A third, acknowledged before it falls due: its job is cancelled.
    let third = s.record_notification(new("k3", "Returned"), Some(fanout())).await.unwrap();
    s.cancel_delivered_pushes(bob, third.pos).await.unwrap();
    assert!(s.claim_push_jobs(100, 60_000, 10).await.unwrap().is_empty(), "acknowledged: no push");
}

/// A backend's store for one test, and what to clean up after it.
pub struct Guard {
    _dir: Option<tempfile::TempDir>,
    scylla: Option<tidings::store::scylla::ScyllaStore>,
}

impl Guard {
    /// Empties the test's keyspace for the next test (a failed test leaves it, to look at).
    async fn finish(self) {
        if let Some(store) = self.scylla {
            let keyspace = store.keyspace().to_owned();
            store.close().await;
            crate::harness::recycle_keyspace(crate::prerequisites::scylla_nodes().expect("on ScyllaDB"), keyspace);
        }
    }
}

/// Images: content-addressed (a second upload of the same bytes adds an uploader, nothing else),
/// read back chunk by chunk.
pub async fn media(store: &dyn Store) {
    use tidings::domain::{ImageFormat, MediaId, MediaInfo};
    use tidings::store::NewMedia;
    let bytes: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = MediaId::of(&bytes);
    let info = MediaInfo { id, format: ImageFormat::Png, width: 3, height: 2, bytes: bytes.len() as u64 };
    let chunks: Vec<bytes::Bytes> = bytes.chunks(1024).map(bytes::Bytes::copy_from_slice).collect();
    let put = |uploader: u64, at_ms: i64| NewMedia {
        info: info.clone(),
        uploader: UserId(uploader),
        at_ms,
        chunk_bytes: 1024,
        chunks: chunks.clone(),
    };
    assert_eq!(store.media(id).await.unwrap(), None);
    store.put_media(put(1, 100)).await.unwrap();
    store.put_media(put(2, 200)).await.unwrap();
    let record = store.media(id).await.unwrap().expect("stored");
    assert_eq!((record.info, record.chunk_bytes, record.chunks, record.created_at_ms), (info.clone(), 1024, 3, 100));
    let mut back = Vec::new();
    for index in 0..3 {
        back.extend_from_slice(&store.media_chunk(id, index).await.unwrap().expect("a chunk"));
    }
    assert_eq!(back, bytes);
    assert_eq!(store.media_chunk(id, 3).await.unwrap(), None);
    assert!(store.uploaded_media(id, UserId(1)).await.unwrap());
    assert!(store.uploaded_media(id, UserId(2)).await.unwrap());
    assert!(!store.uploaded_media(id, UserId(3)).await.unwrap());
    let other = MediaId::of(b"other");
    assert_eq!(store.media_chunk(other, 0).await.unwrap(), None);
    assert!(!store.uploaded_media(other, UserId(1)).await.unwrap());
    // Never sent: collected once its last upload is older than the cutoff, not before.
    assert_eq!(store.collect_orphan_media(150, 10).await.unwrap(), 0, "uploaded again at 200");
    assert!(store.media(id).await.unwrap().is_some());
    assert_eq!(store.collect_orphan_media(1000, 10).await.unwrap(), 1);
    assert_eq!(store.media(id).await.unwrap(), None);
    assert_eq!(store.media_chunk(id, 0).await.unwrap(), None);
    assert!(!store.uploaded_media(id, UserId(1)).await.unwrap());
    assert_eq!(store.collect_orphan_media(1000, 10).await.unwrap(), 0);

    // A public image (an avatar): anyone may see it, and it is never collected.
    let avatar_bytes = b"an avatar".to_vec();
    let avatar = MediaId::of(&avatar_bytes);
    let avatar_info = MediaInfo { id: avatar, bytes: avatar_bytes.len() as u64, ..info.clone() };
    let upload = NewMedia {
        info: avatar_info,
        uploader: UserId(1),
        at_ms: 100,
        chunk_bytes: 1024,
        chunks: vec![bytes::Bytes::from(avatar_bytes)],
    };
    store.put_media(upload).await.unwrap();
    assert!(!store.media(avatar).await.unwrap().unwrap().public);
    assert!(!store.may_see_media(avatar, UserId(5)).await.unwrap());
    store.publish_media(avatar).await.unwrap();
    store.publish_media(avatar).await.unwrap();
    assert!(store.media(avatar).await.unwrap().unwrap().public);
    assert!(store.may_see_media(avatar, UserId(5)).await.unwrap(), "anyone sees a public image");
    assert_eq!(store.collect_orphan_media(1000, 10).await.unwrap(), 0, "a public image stays");
    assert!(store.media_chunk(avatar, 0).await.unwrap().is_some());
}

/// Profiles: the defaults, changes of some fields, reads of many, and searches by prefix that
/// follow renames.
pub async fn profiles(store: Arc<dyn Store>) {
    use tidings::domain::{Birthday, MediaId, Profile, ProfileChange};
    let ana = user(&*store, 1, "ana_s").await;
    let bob = user(&*store, 2, "bob").await;
    let anatole = user(&*store, 3, "anatole").await;
    let by_name = |prefix: &str| {
        let (store, prefix) = (store.clone(), prefix.to_owned());
        async move {
            let found = store.search_profiles(prefix, 10).await.unwrap();
            found.into_iter().map(|p| p.username).collect::<Vec<_>>()
        }
    };
    assert_eq!(store.profiles(vec![bob, UserId(99)]).await.unwrap(), vec![Profile::empty(bob, "bob".into())]);
    assert_eq!(by_name("an").await, vec!["ana_s", "anatole"], "users are found by username from sign-up");
    assert!(!store.change_profile(UserId(99), ProfileChange::default()).await.unwrap(), "no such user");

    let avatar = MediaId::of(b"x");
    let birthday = Birthday::parse("1990-05-17");
    let change = ProfileChange {
        display_name: Some("Ana María Silva".into()),
        bio: Some("tea".into()),
        avatar: Some(Some(avatar)),
        birthday: Some(birthday),
        private: Some(true),
    };
    assert!(store.change_profile(ana, change).await.unwrap());
    // Two changes of different fields at once: neither is lost.
    let (renamed, bio) = futures_util::join!(
        store.change_profile(bob, ProfileChange { display_name: Some("Bob Marley".into()), ..Default::default() }),
        store.change_profile(bob, ProfileChange { bio: Some("reggae".into()), ..Default::default() }),
    );
    assert!(renamed.unwrap() && bio.unwrap());
    let mut both = store.profiles(vec![ana, bob, anatole]).await.unwrap();
    both.sort_by_key(|p| p.user);
    let expected_ana = Profile {
        user: ana,
        username: "ana_s".into(),
        display_name: "Ana María Silva".into(),
        bio: "tea".into(),
        avatar: Some(avatar),
        birthday,
        private: true,
    };
    assert_eq!(both[0], expected_ana);
    assert_eq!((both[1].display_name.as_str(), both[1].bio.as_str()), ("Bob Marley", "reggae"));
    assert_eq!(both[2], Profile::empty(anatole, "anatole".into()));

    assert_eq!(by_name("ana").await, vec!["ana_s", "anatole"], "by key: 'ana maría silva' < 'ana_s' < 'anatole'");
    assert_eq!(by_name("mar").await, vec!["bob", "ana_s"], "'marley' < 'maría silva'");
    assert_eq!(by_name("marí").await, vec!["ana_s"]);
    assert_eq!(store.search_profiles("an".into(), 1).await.unwrap().len(), 1, "at most the limit");

    // A rename: the old name finds her no more, the new one does; clearing a field clears it.
    let rename = ProfileChange { display_name: Some("Zoe".into()), avatar: Some(None), ..Default::default() };
    assert!(store.change_profile(ana, rename).await.unwrap());
    assert_eq!(by_name("sil").await, Vec::<String>::new());
    assert_eq!(by_name("zo").await, vec!["ana_s"]);
    let now = store.profiles(vec![ana]).await.unwrap().pop().unwrap();
    assert_eq!((now.display_name.as_str(), now.avatar, now.bio.as_str()), ("Zoe", None, "tea"));
}

/// The follow graph: transitions with their conditions, exact counts (also under concurrent
/// changes of one user's follows), lists in pages, blocks.
pub async fn follows(store: Arc<dyn Store>) {
    use tidings::domain::{FollowCounts, FollowList, FollowState};
    const FANS: u64 = 30;
    let star = user(&*store, 1, "star").await;
    let fans: Vec<UserId> = futures_util::future::join_all((0..FANS).map(|i| {
        let store = store.clone();
        async move { user(&*store, 100 + i * 7, &format!("fan{i}")).await }
    }))
    .await;
    let counts = |user: UserId| {
        let store = store.clone();
        async move { store.follow_counts(vec![user]).await.unwrap()[0].1 }
    };
    let page = |user: UserId, list: FollowList, after: Option<UserId>, limit: usize| {
        let store = store.clone();
        async move { store.follow_list(user, list, after, limit).await.unwrap() }
    };
    use FollowState::{Following, None as Not, Requested};

    // Every fan follows the star at once: the count is exact.
    let follows = fans.iter().map(|&fan| {
        let store = store.clone();
        async move { store.set_follow(fan, star, Following, &[]).await.unwrap() }
    });
    assert!(futures_util::future::join_all(follows).await.iter().all(|before| *before == Not));
    assert_eq!(counts(star).await, FollowCounts { followers: FANS, following: 0 });
    assert_eq!(counts(fans[0]).await, FollowCounts { followers: 0, following: 1 });
    // A retry changes nothing; neither does a change whose condition does not hold.
    assert_eq!(store.set_follow(fans[0], star, Following, &[]).await.unwrap(), Following);
    assert_eq!(store.set_follow(fans[0], star, Not, &[Requested]).await.unwrap(), Following);
    assert_eq!(counts(star).await.followers, FANS);

    // The followers in pages of 7, in id order, each once.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let got = page(star, FollowList::Followers, after, 7).await;
        listed.extend(got.iter().copied());
        if got.len() < 7 {
            break;
        }
        after = got.last().copied();
    }
    let mut expected = fans.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(page(fans[3], FollowList::Following, None, 10).await, vec![star]);

    // Half unfollow while the other half follow again (retries): exact counts after.
    let churn = fans.iter().enumerate().map(|(i, &fan)| {
        let store = store.clone();
        async move {
            let state = if i % 2 == 0 { Not } else { Following };
            store.set_follow(fan, star, state, &[]).await.unwrap();
        }
    });
    futures_util::future::join_all(churn).await;
    assert_eq!(counts(star).await.followers, FANS / 2);
    assert_eq!(page(star, FollowList::Followers, None, 100).await.len() as u64, FANS / 2);
    assert_eq!(counts(fans[0]).await.following, 0);
    assert_eq!(store.follow_state(fans[0], star).await.unwrap(), Not);

    // A request counts for nothing until approved, and is listed as a request.
    assert_eq!(store.set_follow(fans[0], star, Requested, &[Not]).await.unwrap(), Not);
    assert_eq!(page(star, FollowList::Requests, None, 10).await, vec![fans[0]]);
    assert_eq!(counts(star).await.followers, FANS / 2);
    assert_eq!(store.set_follow(fans[0], star, Following, &[Requested]).await.unwrap(), Requested);
    assert_eq!(counts(star).await.followers, FANS / 2 + 1);
    assert_eq!(page(star, FollowList::Requests, None, 10).await, Vec::<UserId>::new());

    // Blocks, one way: listed for the blocker, known to the blocked.
    store.set_block(star, fans[1], true).await.unwrap();
    store.set_block(star, fans[1], true).await.unwrap();
    assert_eq!(store.blockers_of(fans[1], vec![star, fans[2]]).await.unwrap(), vec![star]);
    assert_eq!(store.blockers_of(star, vec![fans[1]]).await.unwrap(), Vec::<UserId>::new());
    assert_eq!(page(star, FollowList::Blocked, None, 10).await, vec![fans[1]]);
    store.set_block(star, fans[1], false).await.unwrap();
    assert_eq!(store.blockers_of(fans[1], vec![star]).await.unwrap(), Vec::<UserId>::new());
    assert_eq!(store.settle_follows(100).await.unwrap(), 0, "nothing left half made");
}

/// Posts: created once whatever is retried, counted exactly, listed newest first in pages,
/// deleted; their images readable as the author's posts are.
pub async fn posts(store: Arc<dyn Store>) {
    use tidings::domain::{FollowState, ImageFormat, Location, MediaId, MediaInfo, Post, PostId, ProfileChange};
    use tidings::store::NewMedia;
    let (author, fan, stranger) =
        (user(&*store, 1, "author").await, user(&*store, 2, "fan").await, user(&*store, 3, "stranger").await);
    let photo_bytes = b"a photo".to_vec();
    let photo = MediaId::of(&photo_bytes);
    let info = MediaInfo { id: photo, format: ImageFormat::Png, width: 1, height: 1, bytes: 7 };
    let upload = NewMedia { info, uploader: author, at_ms: 10, chunk_bytes: 1024, chunks: vec![photo_bytes.into()] };
    store.put_media(upload).await.unwrap();
    let post = |id: u64, caption: &str| Post {
        id: PostId(id),
        author,
        media: vec![photo],
        caption: caption.into(),
        location: Location::checked(52.5, 13.4),
        created_at_ms: id as i64,
    };
    let count = || {
        let store = store.clone();
        async move { store.post_counts(vec![author]).await.unwrap()[0].1 }
    };
    assert_eq!(count().await, 0);
    let first = store.create_post(post(100, "first"), "c1".into()).await.unwrap();
    assert_eq!(first, post(100, "first"));
    // A retry, even with another id: the post made the first time, counted once.
    assert_eq!(store.create_post(post(101, "first again"), "c1".into()).await.unwrap(), post(100, "first"));
    assert_eq!(count().await, 1);
    for i in 0..5u64 {
        store.create_post(post(200 + i, &format!("p{i}")), format!("c{}", 2 + i)).await.unwrap();
    }
    assert_eq!(count().await, 6);
    assert_eq!(store.post(PostId(203)).await.unwrap(), Some(post(203, "p3")));
    assert_eq!(store.post(PostId(999)).await.unwrap(), None);
    let page = store.posts_of(author, None, 4).await.unwrap();
    assert_eq!(page.iter().map(|p| p.id.0).collect::<Vec<_>>(), vec![204, 203, 202, 201], "newest first");
    let rest = store.posts_of(author, Some(PostId(201)), 4).await.unwrap();
    assert_eq!(rest.iter().map(|p| p.id.0).collect::<Vec<_>>(), vec![200, 100]);
    assert!(store.posts_of(fan, None, 4).await.unwrap().is_empty());

    // The photo: anyone's while the author is public; followers' once private; never collected.
    assert!(store.may_see_media(photo, stranger).await.unwrap());
    store.change_profile(author, ProfileChange { private: Some(true), ..Default::default() }).await.unwrap();
    assert!(!store.may_see_media(photo, stranger).await.unwrap());
    store.set_follow(fan, author, FollowState::Following, &[]).await.unwrap();
    assert!(store.may_see_media(photo, fan).await.unwrap());
    assert!(store.may_see_media(photo, author).await.unwrap());
    assert_eq!(store.collect_orphan_media(i64::MAX, 10).await.unwrap(), 0);

    // Deleted once; the count follows; a retry of its creation does not bring it back.
    assert!(store.delete_post(PostId(100)).await.unwrap());
    assert!(!store.delete_post(PostId(100)).await.unwrap());
    assert_eq!(store.post(PostId(100)).await.unwrap(), None);
    assert_eq!(count().await, 5);
    let again = store.create_post(post(300, "new"), "c1".into()).await.unwrap();
    assert_eq!(again.id, PostId(300), "the client id is free again after a delete: a new post");
    assert_eq!(count().await, 6);
}

/// Home feeds: a new post's fan-out job, pages written once however often redone, the job's
/// progress, feeds newest first in pages, wide authors.
pub async fn feeds(store: Arc<dyn Store>) {
    use tidings::domain::{Post, PostId};
    let author = UserId(1);
    let fans: Vec<UserId> = (10..15).map(UserId).collect();
    let post = |id: u64| Post {
        id: PostId(id),
        author,
        media: Vec::new(),
        caption: String::new(),
        location: None,
        created_at_ms: 5,
    };
    store.create_post(post(100), "a".into()).await.unwrap();
    let job = store.fanout_job(PostId(100)).await.unwrap().expect("a new post's fan-out is to do");
    assert_eq!((job.post, job.author, job.after, job.started_at_ms), (PostId(100), author, None, 5));
    assert_eq!(store.pending_fanouts(10).await.unwrap(), vec![job]);
    store.fan_out_page(job, &fans[..3], true, &[]).await.unwrap();
    store.fan_out_page(job, &fans[..3], true, &[]).await.unwrap();
    let job = store.fanout_job(PostId(100)).await.unwrap().unwrap();
    assert_eq!(job.after, Some(fans[2]));
    store.fan_out_page(job, &fans[3..], true, &[]).await.unwrap();
    store.finish_fanout(PostId(100)).await.unwrap();
    assert_eq!(store.fanout_job(PostId(100)).await.unwrap(), None);
    assert!(store.pending_fanouts(10).await.unwrap().is_empty());
    for &fan in &fans {
        assert_eq!(store.home_feed(fan, None, 10).await.unwrap(), vec![(PostId(100), author)], "once each");
    }
    // A retried creation of a post whose fan-out is done starts none.
    store.create_post(post(101), "a".into()).await.unwrap();
    assert!(store.pending_fanouts(10).await.unwrap().is_empty());

    for id in [200, 300, 400] {
        store.create_post(post(id), format!("p{id}")).await.unwrap();
        let job = store.fanout_job(PostId(id)).await.unwrap().unwrap();
        store.fan_out_page(job, &fans[..1], id != 300, &[]).await.unwrap();
        store.finish_fanout(PostId(id)).await.unwrap();
    }
    let newest = store.home_feed(fans[0], None, 2).await.unwrap();
    assert_eq!(newest, vec![(PostId(400), author), (PostId(200), author)], "300 was not written to feeds");
    assert_eq!(store.home_feed(fans[0], Some(PostId(200)), 2).await.unwrap(), vec![(PostId(100), author)]);

    assert!(store.wide_authors().await.unwrap().is_empty());
    store.add_wide_author(author).await.unwrap();
    store.add_wide_author(author).await.unwrap();
    assert_eq!(store.wide_authors().await.unwrap(), vec![author]);
}

/// Likes and comments: exact counts under concurrent changes and retries, pages, deletes.
pub async fn reactions(store: Arc<dyn Store>) {
    use tidings::domain::{Comment, CommentId, PostId, Reactions};
    let post = PostId(500);
    let fans: Vec<UserId> = (1..=20).map(UserId).collect();
    // Everyone likes at once, twice (a retry): counted once each.
    let likes = fans.iter().flat_map(|&f| [f, f]).map(|f| {
        let store = store.clone();
        async move { store.set_like(post, f, true).await.unwrap() }
    });
    let changed = futures_util::future::join_all(likes).await;
    assert_eq!(changed.iter().filter(|c| **c).count(), fans.len(), "each like counted once");
    assert_eq!(store.reactions(vec![post]).await.unwrap(), vec![(post, Reactions { likes: 20, comments: 0 })]);
    assert!(store.liked(post, fans[3]).await.unwrap());
    assert!(!store.liked(post, UserId(99)).await.unwrap());
    assert_eq!(store.likers(post, None, 5).await.unwrap(), fans[..5].to_vec());
    assert_eq!(store.likers(post, Some(fans[17]), 5).await.unwrap(), fans[18..].to_vec());
    assert!(store.set_like(post, fans[0], false).await.unwrap());
    assert!(!store.set_like(post, fans[0], false).await.unwrap());
    assert_eq!(store.reactions(vec![post]).await.unwrap()[0].1.likes, 19);
    let latest = store.latest_reactions(post).await.unwrap();
    assert_eq!(latest.likers.len(), 3, "{latest:?}");
    assert!(!latest.likers.contains(&fans[0]), "one who unliked is not among the latest");
    assert_eq!(latest.comment, None);
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store.set_like(post, fans[0], true).await.unwrap();
    assert_eq!(store.latest_reactions(post).await.unwrap().likers[0], fans[0], "newest first");
    store.set_like(post, fans[0], false).await.unwrap();

    let comment = |id: u64, author: UserId, text: &str| Comment {
        id: CommentId(id),
        post,
        author,
        text: text.into(),
        created_at_ms: id as i64,
    };
    assert_eq!(
        store.add_comment(comment(10, fans[0], "first"), "a".into()).await.unwrap(),
        comment(10, fans[0], "first")
    );
    assert_eq!(
        store.add_comment(comment(11, fans[0], "first again"), "a".into()).await.unwrap(),
        comment(10, fans[0], "first"),
        "a retry: the comment made the first time"
    );
    for i in 0..5u64 {
        store.add_comment(comment(20 + i, fans[1], &format!("c{i}")), format!("b{i}")).await.unwrap();
    }
    assert_eq!(store.reactions(vec![post]).await.unwrap()[0].1.comments, 6);
    assert_eq!(store.latest_reactions(post).await.unwrap().comment.map(|c| c.id), Some(CommentId(24)));
    let page = store.comments(post, None, 4).await.unwrap();
    assert_eq!(page.iter().map(|c| c.id.0).collect::<Vec<_>>(), vec![10, 20, 21, 22], "oldest first");
    let rest = store.comments(post, Some(CommentId(22)), 4).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.id.0).collect::<Vec<_>>(), vec![23, 24]);
    assert!(store.delete_comment(post, CommentId(21)).await.unwrap());
    assert!(!store.delete_comment(post, CommentId(21)).await.unwrap());
    assert_eq!(store.comment(post, CommentId(21)).await.unwrap(), None);
    assert_eq!(store.reactions(vec![post]).await.unwrap()[0].1.comments, 5);
    assert_eq!(store.reactions(vec![PostId(501)]).await.unwrap()[0].1, Reactions::default());
}

pub async fn activity(store: Arc<dyn Store>) {
    use tidings::domain::{ACTIVITY_PUSH_ROOM, Activity, ActivityKind, ActivityStatus, CommentId, NewActivity, PostId};
    let s = &*store;
    let (ana, bob, cyd, dan) =
        (user(s, 1, "ana").await, user(s, 2, "bob").await, user(s, 3, "cyd").await, user(s, 4, "dan").await);
    let phone = device(s, ana, 10).await;
    s.set_push_token(registration(ana, phone, Platform::Ios, "tok")).await.unwrap();
    let new = |kind, actor, post: u64, at_ms| NewActivity {
        recipient: ana,
        kind,
        actor,
        post: PostId(post),
        comment: CommentId(0),
        text: String::new(),
        at_ms,
        window_ms: 60_000,
    };
    let push = || {
        Some(PushFanout {
            users: vec![ana],
            kind: PushKind::Activity,
            preview: String::new(),
            due_at_ms: 0,
            platforms: vec![Platform::Ios],
        })
    };
    let record = |activity: NewActivity, push: Option<PushFanout>| {
        let store = store.clone();
        async move { store.record_activity(activity, push).await.unwrap() }
    };

    let (pos, first) = record(new(ActivityKind::Followed, bob, 0, 1_000), None).await.unwrap();
    assert_eq!((pos, first.group.count, first.group.actors.clone()), (1, 1, vec![bob]));
    assert_eq!(first.group.id, first.id, "a group is named by its first activity");
    assert!(record(new(ActivityKind::Followed, bob, 0, 1_500), None).await.is_none(), "once per actor and thing");
    let (_, second) = record(new(ActivityKind::Followed, cyd, 0, 2_000), None).await.unwrap();
    assert_eq!((second.group.id, second.group.count, second.group.actors.clone()), (first.id, 2, vec![cyd, bob]));

    // Two likes with pushes: one pending push, worded by the newest, counting both.
    record(new(ActivityKind::Liked, bob, 7, 2_000), push()).await.unwrap();
    let (like_pos, like) = record(new(ActivityKind::Liked, cyd, 7, 3_000), push()).await.unwrap();
    assert_eq!(like.group.count, 2);
    let jobs = s.claim_push_jobs(10, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!((job.room, job.kind, job.count, job.last_pos), (ACTIVITY_PUSH_ROOM, PushKind::Activity, 2, like_pos));
    assert_eq!((job.sender, job.preview.as_str()), (cyd, "cyd and 1 other liked your photo"));
    let context = s.push_context(job.clone()).await.unwrap();
    assert!(context.member);
    assert_eq!((context.sender_name.as_str(), context.muted_until_ms), ("cyd", 0));
    s.finish_push_job(job.clone(), PushJobEnd::Sent).await.unwrap();
    // Past the window, a new group.
    let (late_pos, late) = record(new(ActivityKind::Liked, dan, 7, 3_000 + 60_000), push()).await.unwrap();
    assert_eq!((late.group.id, late.group.count), (late.id, 1));

    // The stream has each, in order, as recorded.
    let events = s.events_after(ana, 0, 10).await.unwrap();
    let got: Vec<(u64, Activity)> = events
        .into_iter()
        .map(|(pos, e)| match e {
            StreamEvent::Activity(a) => (pos, (*a).clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], (1, first));
    assert_eq!(got[1].1, second);
    assert_eq!(got[3], (like_pos, like));
    assert_eq!(got[4], (late_pos, late));

    // Seen: the unread count past it; never back; pending pushes up to it cancelled.
    assert_eq!(s.activity_status(ana).await.unwrap(), ActivityStatus { seen_up_to_pos: 0, unread: 5 });
    assert_eq!(s.set_activity_seen(ana, 2).await.unwrap(), ActivityStatus { seen_up_to_pos: 2, unread: 3 });
    assert_eq!(s.set_activity_seen(ana, 1).await.unwrap(), ActivityStatus { seen_up_to_pos: 2, unread: 3 });
    assert_eq!(s.set_activity_seen(ana, late_pos).await.unwrap().unread, 0);
    assert!(s.claim_push_jobs(100_000, 60_000, 10).await.unwrap().is_empty(), "seen: its push is cancelled");
}

/// The conformance suite for one backend: `$make` evaluates (in the test's async context) to
/// `Some((Guard, Arc<dyn Store>))`, or `None` when the backend is not there (the skip is reported).
macro_rules! store_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn accounts() {
                let Some((guard, store)) = $make else { return };
                super::accounts(&*store).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn rooms_and_streams() {
                let Some((guard, store)) = $make else { return };
                super::rooms_and_streams(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn ordered_submission() {
                let Some((guard, store)) = $make else { return };
                super::ordered_submission(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn push_queue() {
                let Some((guard, store)) = $make else { return };
                super::push_queue(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn push_queue_inspection() {
                let Some((guard, store)) = $make else { return };
                super::push_queue_inspection(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn notifications() {
                let Some((guard, store)) = $make else { return };
                super::notifications(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn push_tokens_and_preferences() {
                let Some((guard, store)) = $make else { return };
                super::push_preferences(&*store).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn stream_epochs_hold_until_rotated() {
                let Some((guard, store)) = $make else { return };
                super::stream_epochs(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn media_is_stored_once_in_chunks() {
                let Some((guard, store)) = $make else { return };
                super::media(&*store).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn profiles_and_search() {
                let Some((guard, store)) = $make else { return };
                super::profiles(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn follows_and_blocks() {
                let Some((guard, store)) = $make else { return };
                super::follows(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn posts_are_counted_exactly() {
                let Some((guard, store)) = $make else { return };
                super::posts(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn home_feeds_and_their_fan_outs() {
                let Some((guard, store)) = $make else { return };
                super::feeds(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn likes_and_comments_are_counted_exactly() {
                let Some((guard, store)) = $make else { return };
                super::reactions(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn activity_is_recorded_once_grouped_and_pushed() {
                let Some((guard, store)) = $make else { return };
                super::activity(store.clone()).await;
                guard.finish().await;
            }

            #[tokio::test]
            async fn a_writer_that_lost_its_room_is_fenced() {
                let Some((guard, store)) = $make else { return };
                super::fencing(store.clone()).await;
                guard.finish().await;
            }
        }
    };
}

fn sqlite() -> Option<(Guard, Arc<dyn Store>)> {
    let dir = tempfile::tempdir().unwrap();
    let options = tidings::store::sqlite::SqliteOptions::new(dir.path().join("t.db"));
    let store = tidings::store::sqlite::SqliteStore::open(options).unwrap();
    Some((Guard { _dir: Some(dir), scylla: None }, Arc::new(store)))
}

store_suite!(sqlite, sqlite());

/// A ScyllaDB store in a keyspace of its own, with small buckets so that logs and streams span
/// several partitions; `None` (reported as skipped) without a CQL node.
async fn scylla() -> Option<(Guard, Arc<dyn Store>)> {
    if !crate::prerequisites::check(crate::prerequisites::Prerequisite::Scylla) {
        return None;
    }
    let nodes = crate::prerequisites::scylla_nodes().expect("checked above");
    let mut options = tidings::store::scylla::ScyllaOptions::new(nodes, crate::harness::pooled_keyspace());
    options.bucket_size = 64;
    let store = tidings::store::scylla::ScyllaStore::open(options).await.expect("the CQL node answers");
    Some((Guard { _dir: None, scylla: Some(store.clone()) }, Arc::new(store)))
}

store_suite!(scylla_store, scylla().await);

/// The ScyllaDB store's own tests, on the CQL node `TIDINGS_SCYLLA_NODES` names, each in a
/// keyspace of its own that is dropped afterwards (the suite above runs there too).
mod scylla {
    use tidings::store::scylla::{ScyllaOptions, ScyllaStore};

    use crate::prerequisites::{Prerequisite, require, scylla_nodes};

    pub async fn open_with(adjust: impl FnOnce(&mut ScyllaOptions)) -> ScyllaStore {
        let keyspace = format!("tidings_test_{:08x}", rand::random::<u32>());
        let mut options = ScyllaOptions::new(scylla_nodes().expect("required"), keyspace);
        adjust(&mut options);
        ScyllaStore::open(options).await.expect("the CQL node answers")
    }

    async fn open() -> ScyllaStore {
        open_with(|_| {}).await
    }

    /// A follow cut short after the follower's side was written (the process died before the
    /// followed's mirror): the follower already follows, the followed's count and list do not show
    /// it yet, and `settle_follows` finishes it, once.
    #[tokio::test]
    async fn a_follow_cut_short_before_its_mirror_is_settled() {
        use tidings::domain::{FollowList, FollowState};
        use tidings::store::GraphStore;
        require!(Prerequisite::Scylla);
        let store = open().await;
        let (fan, star) = (super::user(&store, 16, "fan").await, super::user(&store, 3, "star").await);
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(scylla_nodes().unwrap())
            .build()
            .await
            .unwrap();
        let ks = store.keyspace();
        // What `set_follow` writes before the mirror, as it writes it: the listing (follower 16 is
        // in listing shard 0), then the follower's edge and its partition's count (star 3 is in
        // shard 3 of the fan's follows).
        for cql in [
            format!(
                "INSERT INTO {ks}.follows_unsettled (shard, follower, followee, version, at_ms) VALUES (0, 16, 3, 1, 0)
                 USING TIMESTAMP 1"
            ),
            format!("INSERT INTO {ks}.follows_out (user_id, shard, other, count) VALUES (16, 3, -1, 1)"),
            format!("INSERT INTO {ks}.follows_out (user_id, shard, other, state, version) VALUES (16, 3, 3, 2, 1)"),
        ] {
            session.query_unpaged(cql, ()).await.unwrap();
        }
        assert_eq!(store.follow_state(fan, star).await.unwrap(), FollowState::Following);
        assert_eq!(store.follow_counts(vec![star]).await.unwrap()[0].1.followers, 0, "not mirrored yet");
        assert_eq!(store.settle_follows(100).await.unwrap(), 1);
        assert_eq!(store.follow_counts(vec![star]).await.unwrap()[0].1.followers, 1);
        assert_eq!(store.follow_counts(vec![fan]).await.unwrap()[0].1.following, 1);
        assert_eq!(store.follow_list(star, FollowList::Followers, None, 10).await.unwrap(), vec![fan]);
        assert_eq!(store.settle_follows(100).await.unwrap(), 0, "settled once");
        // A change listed and never made (the process died before writing the edge): its listing
        // goes once it is old, and changes nothing.
        let abandoned = format!(
            "INSERT INTO {ks}.follows_unsettled (shard, follower, followee, version, at_ms) VALUES (0, 16, 3, 2, 0)
             USING TIMESTAMP 2"
        );
        session.query_unpaged(abandoned, ()).await.unwrap();
        assert_eq!(store.settle_follows(100).await.unwrap(), 1);
        assert_eq!(store.settle_follows(100).await.unwrap(), 0, "unlisted");
        assert_eq!(store.follow_counts(vec![star]).await.unwrap()[0].1.followers, 1);
        assert_eq!(store.follow_state(fan, star).await.unwrap(), FollowState::Following);
        store.drop_keyspace().await.unwrap();
    }

    /// A large room's entry is answered once logged (`Logged`) and its positions follow once it
    /// is in every stream; a small room's is answered after its fan-out (`Committed`). Entries
    /// submitted back to back keep their seq order in every stream either way.
    #[tokio::test]
    async fn a_large_rooms_entries_are_answered_before_their_fan_out() {
        use tidings::domain::StreamEvent;
        use tidings::store::{Append, AppendOutcome, Effect, RoomStore, Store, StreamStore};
        require!(Prerequisite::Scylla);
        let store = open_with(|options| options.fanout_after_ack_from = 3).await;
        let users =
            [super::user(&store, 1, "a").await, super::user(&store, 2, "b").await, super::user(&store, 3, "c").await];
        let room = super::group(&store as &dyn Store, 7, users[0], &users).await;
        let epoch = store.claim_room(room).await.unwrap().unwrap().epoch;
        let submit = |seq: u64, recipients: &[tidings::domain::UserId]| {
            let entry = super::entry(room, seq, users[0], super::text("hi", &format!("m{seq}")));
            let append = Append {
                epoch,
                entry: std::sync::Arc::new(entry),
                recipients: recipients.to_vec(),
                effect: Effect::None,
                push: None,
                revised_preview: None,
            };
            store.submit_append(append).unwrap()
        };
        // Two large entries and a small one, submitted back to back.
        let (first, second, small) = (submit(2, &users), submit(3, &users), submit(4, &users[..1]));
        let mut late = Vec::new();
        for outcome in [first.await.unwrap(), second.await.unwrap()] {
            let AppendOutcome::Logged { fanout } = outcome else { panic!("{outcome:?}") };
            late.push(fanout);
        }
        assert!(
            matches!(small.await.unwrap(), AppendOutcome::Committed { positions } if positions == vec![(users[0], 4)])
        );
        for (fanout, pos) in late.into_iter().zip([2, 3]) {
            let mut positions = fanout.done().await.unwrap();
            positions.sort();
            assert_eq!(positions, users.iter().map(|&u| (u, pos)).collect::<Vec<_>>());
        }
        for user in &users[1..] {
            let seqs: Vec<u64> = store
                .events_after(*user, 0, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, e)| match e {
                    StreamEvent::Entry(e) => e.seq,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(seqs, vec![1, 2, 3]);
        }
        assert!(store.rooms_behind().await.unwrap().is_empty(), "every fan-out is done");
        store.drop_keyspace().await.unwrap();
    }

    #[tokio::test]
    async fn a_keyspace_is_migrated_once_and_reopened_as_it_is() {
        require!(Prerequisite::Scylla);
        let store = open().await;
        super::user(&store, 1, "ana").await;
        let keyspace = store.keyspace().to_owned();
        drop(store);
        let again = ScyllaStore::open(ScyllaOptions::new(scylla_nodes().unwrap(), keyspace)).await.unwrap();
        use tidings::store::AccountStore;
        assert!(again.user_by_name("ana").await.unwrap().is_some(), "the data is still there");
        again.drop_keyspace().await.unwrap();
    }
}

/// Reopening the same file keeps everything, and the stream continues where it was.
#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let options = tidings::store::sqlite::SqliteOptions::new(dir.path().join("t.db"));
        Arc::new(tidings::store::sqlite::SqliteStore::open(options).unwrap()) as Arc<dyn Store>
    };
    let store = open();
    let a = user(&*store, 1, "a").await;
    let room = group(&*store, 5, a, &[a]).await;
    store.close().await;
    assert!(store.stream_head(a).await.is_err(), "a closed store refuses work");
    drop(store);
    let store = open();
    assert_eq!(store.stream_head(a).await.unwrap(), 1);
    let out = append(&*store, entry(room, 2, a, text("again", "x")), &[a], Effect::None).await;
    assert_eq!(out, AppendOutcome::Committed { positions: vec![(a, 2)] });
}

/// Two processes' stores on one file (what a cluster's nodes share): when both believe they own a
/// room and append the same seq, exactly one commits; the other is told its seq is taken.
#[tokio::test]
async fn sqlite_two_writers_never_share_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let options = tidings::store::sqlite::SqliteOptions::new(dir.path().join("t.db"));
        Arc::new(tidings::store::sqlite::SqliteStore::open(options).unwrap()) as Arc<dyn Store>
    };
    let (one, two) = (open(), open());
    let a = user(&*one, 1, "a").await;
    let room = group(&*one, 5, a, &[a]).await;
    // Both under the room's current epoch (as if both had read it): the seq is the fence left.
    let epoch = claim(&*one, room).await;
    let mut committed = 0;
    for seq in 2..=50 {
        let first = one.submit_append(Append {
            epoch,
            entry: Arc::new(entry(room, seq, a, text("from one", &format!("one{seq}")))),
            recipients: vec![a],
            effect: Effect::None,
            push: None,
            revised_preview: None,
        });
        let second = two.submit_append(Append {
            epoch,
            entry: Arc::new(entry(room, seq, a, text("from two", &format!("two{seq}")))),
            recipients: vec![a],
            effect: Effect::None,
            push: None,
            revised_preview: None,
        });
        let (first, second) = (first.unwrap().await.unwrap(), second.unwrap().await.unwrap());
        let outcomes = [&first, &second];
        let wins = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Committed { .. })).count();
        let fenced = outcomes.iter().filter(|o| matches!(o, AppendOutcome::SeqTaken)).count();
        assert_eq!((wins, fenced), (1, 1), "seq {seq}: {first:?} / {second:?}");
        committed += wins;
    }
    let (entries, _) = two.history(room, HistoryPage::After { seq: 0, limit: 200 }).await.unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "every seq once");
    assert_eq!(committed, 49);
    // Every stream position was given once, too.
    let events = one.events_after(a, 0, 1000).await.unwrap();
    let positions: Vec<u64> = events.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=50).collect::<Vec<_>>());
}

/// Nodes of a cluster starting together open one fresh file at the same moment: all succeed.
#[tokio::test]
async fn sqlite_stores_opened_together_on_a_fresh_file_all_open() {
    // The race is narrow: try it on several fresh files.
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let options = tidings::store::sqlite::SqliteOptions::new(path);
                    tidings::store::sqlite::SqliteStore::open(options).map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().expect("every store opens");
        }
    }
}
