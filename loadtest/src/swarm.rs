//! The swarm engine: simulated users with one or more devices, each device a task holding one real
//! WebSocket connection. Senders send at a fixed rate; latency is measured from the *intended* send
//! time (so a slow server cannot hide its queueing: no coordinated omission). Every device checks
//! what it receives against the oracle.
//!
//! A run has two halves: `setup` (sign-ups, log-ins, rooms: done once, by one process) produces a
//! `Roster`; `run_shard` drives the devices of one shard of the roster. Several processes can each
//! run a shard of the same roster (see `main.rs`), and their `ShardResult`s merge.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};
use tidings_client::{Connection, Http, Incoming};
use tokio::sync::mpsc;

use crate::oracle::{DeviceLog, SentLog};
use crate::outbox::{Answer, Outbox, Send};
use crate::stats::{Latency, LatencyWire};

/// Where the swarm connects, and from where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// host:port of each node; users are spread over them.
    pub servers: Vec<String>,
    /// Local addresses to connect from, round-robin (127.0.0.x).
    pub source_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterUser {
    pub id: u64,
    /// One access token per device.
    pub devices: Vec<String>,
    /// Which of `Target::servers` this user's devices use.
    pub server: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterRoom {
    pub id: u64,
    /// Indexes into `Roster::users`.
    pub members: Vec<usize>,
    /// The members that send to this room.
    pub senders: Vec<usize>,
}

/// Who exists for a run: made once by `setup`, shared by every shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Roster {
    pub users: Vec<RosterUser>,
    pub rooms: Vec<RosterRoom>,
}

/// The shape of the rooms to create.
#[derive(Debug, Clone)]
pub struct RosterPlan {
    pub users: usize,
    pub devices_per_user: usize,
    /// Each room: its members and its senders, as user indexes. Rooms of two are direct rooms.
    pub rooms: Vec<(Vec<usize>, Vec<usize>)>,
}

/// How the devices behave during one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Behaviour {
    /// Messages per second, over all senders of all shards.
    pub rate_per_sec: f64,
    pub duration_secs: f64,
    pub body_bytes: usize,
    /// Device reconnects per second over the whole swarm (each goes offline briefly, then resumes
    /// from its last position).
    pub churn_per_sec: f64,
    /// Senders send a typing indicator before every fifth message.
    pub typing: bool,
    /// Receivers send a read receipt for what they received, about once a second.
    pub read_receipts: bool,
    /// After sending stops, how long to wait for the last deliveries.
    pub drain_secs: f64,
    /// Distinguishes phases of one session (max-rate search) in message texts.
    pub phase: u32,
}

/// Deliberate faults, for testing the oracle itself.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Forget the n-th delivery seen by this shard (1-based), as if it never arrived.
    pub drop_delivery: Option<u64>,
}

/// One device's rooms and what it saw of each (room, sender) stream.
pub type DeviceReport = (Vec<u64>, Vec<((u64, u64), crate::oracle::StreamLog)>);

/// What one shard measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardResult {
    /// ((room, sender), acknowledged messages).
    pub sent: Vec<((u64, u64), u64)>,
    /// For each device: its rooms and its log.
    pub devices: Vec<DeviceReport>,
    pub ack_latency: LatencyWire,
    pub delivery_latency: LatencyWire,
    /// Sends that failed once and were retried (same client_msg_id; the server stores them once).
    pub send_retries: u64,
    /// Sends never acknowledged by the end of the run.
    pub send_failures: u64,
    pub reconnects: u64,
    pub connections: u64,
    pub deliveries: u64,
    pub elapsed_secs: f64,
}

/// Live counters, for progress bars.
#[derive(Default)]
pub struct Progress {
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub connected: AtomicU64,
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Retries a request answered UNAVAILABLE (a store that is busy or changing nodes), as an app does:
/// after a pause that doubles, a few times.
async fn retry_unavailable<T, F, Fut>(request: F) -> Result<T, tidings_client::ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tidings_client::ClientError>>,
{
    let mut pause = Duration::from_millis(200);
    for _ in 0..8 {
        match request().await {
            Err(e) if e.code() == Some(wire::ErrorCode::Unavailable) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(3));
            }
            answer => return answer,
        }
    }
    request().await
}

/// Signs up as an app does: an UNAVAILABLE answer (the store is busy: a burst of sign-ups is a
/// burst of lightweight transactions on ScyllaDB) is retried after a pause, a few times.
async fn sign_up(http: &Http, name: &str, password: &str) -> Result<wire::AuthResponse, tidings_client::ClientError> {
    let mut pause = Duration::from_millis(200);
    for attempt in 0..8 {
        match http.sign_up(name, password, "swarm-0").await {
            Err(e) if e.code() == Some(wire::ErrorCode::Unavailable) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(3));
            }
            // A timed-out attempt that took the name after all: the account is ours.
            Err(e) if attempt > 0 && e.code() == Some(wire::ErrorCode::Conflict) => {
                return http.log_in(name, password, "swarm-0").await;
            }
            answer => return answer,
        }
    }
    http.sign_up(name, password, "swarm-0").await
}

/// Signs up the users, logs in their extra devices and creates the rooms.
pub async fn setup(target: &Target, plan: &RosterPlan, prefix: &str, progress: &Progress) -> anyhow::Result<Roster> {
    const PASSWORD: &str = "swarm-password";
    let servers = target.servers.len().max(1);
    let users: Vec<anyhow::Result<RosterUser>> = futures_util::stream::iter(0..plan.users)
        .map(|i| {
            let server = i % servers;
            let http = Http::new(format!("http://{}", target.servers[server]));
            let name = format!("{prefix}_{i}");
            async move {
                let first = sign_up(&http, &name, PASSWORD).await.with_context(|| format!("sign up {name}"))?;
                let mut devices = vec![first.access_token];
                for d in 1..plan.devices_per_user {
                    devices.push(http.log_in(&name, PASSWORD, &format!("swarm-{d}")).await?.access_token);
                }
                progress.connected.fetch_add(1, Ordering::Relaxed);
                Ok(RosterUser { id: first.user_id, devices, server })
            }
        })
        .buffered(32)
        .collect()
        .await;
    let users: Vec<RosterUser> = users.into_iter().collect::<anyhow::Result<_>>()?;
    let mut rooms = Vec::with_capacity(plan.rooms.len());
    let mut creators: HashMap<usize, Connection> = HashMap::new();
    for (members, senders) in &plan.rooms {
        let creator = members[0];
        let conn = match creators.entry(creator) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let user = &users[creator];
                let ws = format!("ws://{}", target.servers[user.server]);
                e.insert(Connection::connect(&ws, &user.devices[0], Encoding::Protobuf).await?)
            }
        };
        let name = format!("{prefix} room {}", rooms.len());
        let ids: Vec<u64> = members[1..].iter().map(|&m| users[m].id).collect();
        let room = retry_unavailable(|| async {
            match ids[..] {
                [peer] => conn.create_direct(peer).await,
                _ => conn.create_group(&name, ids.clone()).await,
            }
        })
        .await?;
        rooms.push(RosterRoom { id: room.room_id, members: members.clone(), senders: senders.clone() });
    }
    Ok(Roster { users, rooms })
}

/// One device's view: its connection details and what it has seen.
struct Device {
    user: usize,
    user_id: u64,
    token: String,
    ws: String,
    source: Option<IpAddr>,
    rooms: Vec<u64>,
    /// Rooms this device sends to (its user's first device only), with the per-device send rate.
    sends_to: Vec<u64>,
}

struct DeviceOutcome {
    rooms: Vec<u64>,
    log: DeviceLog,
    sent: SentLog,
    ack_latency: Latency,
    delivery_latency: Latency,
    send_retries: u64,
    send_failures: u64,
    reconnects: u64,
    deliveries: u64,
}

/// Drives the devices of users `u` with `u % shards == shard` through one phase.
pub async fn run_shard(
    roster: &Roster,
    target: &Target,
    behaviour: &Behaviour,
    shard: usize,
    shards: usize,
    faults: Faults,
    progress: Arc<Progress>,
) -> anyhow::Result<ShardResult> {
    let mut rooms_of: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut sends_of: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut total_senders = 0usize;
    for room in &roster.rooms {
        for &m in &room.members {
            rooms_of.entry(m).or_default().push(room.id);
        }
        for &s in &room.senders {
            sends_of.entry(s).or_default().push(room.id);
            total_senders += 1;
        }
    }
    // Each (sender, room) pair sends at the same rate.
    let pair_rate = if total_senders == 0 { 0.0 } else { behaviour.rate_per_sec / total_senders as f64 };
    let mut devices = Vec::new();
    let mut source = 0usize;
    for (u, user) in roster.users.iter().enumerate().filter(|(u, _)| u % shards.max(1) == shard) {
        for (d, token) in user.devices.iter().enumerate() {
            let ip = (!target.source_ips.is_empty()).then(|| target.source_ips[source % target.source_ips.len()]);
            source += 1;
            devices.push(Device {
                user: u,
                user_id: user.id,
                token: token.clone(),
                ws: format!("ws://{}", target.servers[user.server]),
                source: ip,
                rooms: rooms_of.get(&u).cloned().unwrap_or_default(),
                sends_to: if d == 0 { sends_of.get(&u).cloned().unwrap_or_default() } else { Vec::new() },
            });
        }
    }
    let device_count = devices.len().max(1);
    // Connect everyone first (and catch up), so sending starts on a settled swarm.
    let mut connected = Vec::with_capacity(devices.len());
    let connections: Vec<anyhow::Result<(Device, Connection, u64)>> = futures_util::stream::iter(devices)
        .map(|device| {
            let progress = progress.clone();
            async move {
                let (conn, pos) = connect_and_sync(&device, 0).await?;
                progress.connected.fetch_add(1, Ordering::Relaxed);
                Ok((device, conn, pos))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for c in connections {
        connected.push(c?);
    }
    let started = Instant::now();
    let start_us = unix_micros() + 200_000;
    let mut tasks = Vec::with_capacity(connected.len());
    for (device, conn, pos) in connected {
        let behaviour = behaviour.clone();
        let progress = progress.clone();
        let churn_mean_secs =
            if behaviour.churn_per_sec > 0.0 { device_count as f64 / behaviour.churn_per_sec } else { 0.0 };
        tasks.push(tokio::spawn(async move {
            drive_device(device, conn, pos, behaviour, pair_rate, start_us, churn_mean_secs, faults, progress).await
        }));
    }
    let mut result = ShardResult { connections: tasks.len() as u64, ..Default::default() };
    let mut sent = SentLog::new();
    let mut ack = Latency::default();
    let mut delivery = Latency::default();
    for task in tasks {
        let outcome = task.await??;
        for (key, count) in outcome.sent {
            *sent.entry(key).or_default() += count;
        }
        ack.merge(&outcome.ack_latency);
        delivery.merge(&outcome.delivery_latency);
        result.send_retries += outcome.send_retries;
        result.send_failures += outcome.send_failures;
        result.reconnects += outcome.reconnects;
        result.deliveries += outcome.deliveries;
        result.devices.push((outcome.rooms, outcome.log.into_iter().collect()));
    }
    result.sent = sent.into_iter().collect();
    result.ack_latency = ack.to_wire();
    result.delivery_latency = delivery.to_wire();
    result.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(result)
}

async fn connect_and_sync(device: &Device, after_pos: u64) -> anyhow::Result<(Connection, u64)> {
    let mut conn = Connection::connect_from(device.source, &device.ws, &device.token, Encoding::Protobuf).await?;
    conn.sync(after_pos).await?;
    // Catch up before the phase starts; what arrives here predates the phase.
    let mut pos = after_pos;
    loop {
        match conn.next_within(Duration::from_secs(30)).await? {
            Incoming::Event(e) => pos = e.pos,
            Incoming::Notice(n) if n.kind == wire::NoticeKind::CaughtUp as i32 => break,
            _ => {}
        }
    }
    Ok((conn, pos))
}

/// A message text: `ph<phase>|<number>|<intended unix micros>|` and padding.
fn message_text(phase: u32, number: u64, intended_us: u64, body_bytes: usize) -> String {
    let mut text = format!("ph{phase}|{number}|{intended_us}|");
    while text.len() < body_bytes {
        text.push('x');
    }
    text
}

fn parse_text(text: &str, phase: u32) -> Option<(u64, u64)> {
    let mut parts = text.split('|');
    let tag = parts.next()?;
    if tag.strip_prefix("ph")?.parse::<u32>().ok()? != phase {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// An acknowledgement (or failure) of one send, reported back to its device.
struct AckReport {
    room: u64,
    number: u64,
    /// The outbox's tag for the connection the send went out on.
    tag: u64,
    ok: bool,
}

/// Puts the outbox's resends ahead of whatever was queued on the old connection (those are in
/// the resends too if they had gone out; queued ones keep their place after them).
fn resend_first(retry: &mut Vec<Send>, resends: Vec<Send>) {
    let queued: Vec<Send> = std::mem::replace(retry, resends);
    for send in queued {
        if !retry.contains(&send) {
            retry.push(send);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive_device(
    device: Device,
    mut conn: Connection,
    mut last_pos: u64,
    behaviour: Behaviour,
    pair_rate: f64,
    start_us: u64,
    churn_mean_secs: f64,
    faults: Faults,
    progress: Arc<Progress>,
) -> anyhow::Result<DeviceOutcome> {
    let mut out = DeviceOutcome {
        rooms: device.rooms.clone(),
        log: DeviceLog::new(),
        sent: SentLog::new(),
        ack_latency: Latency::default(),
        delivery_latency: Latency::default(),
        send_retries: 0,
        send_failures: 0,
        reconnects: 0,
        deliveries: 0,
    };
    let duration_us = (behaviour.duration_secs * 1e6) as u64;
    let end_us = start_us + duration_us;
    let drain_until = end_us + (behaviour.drain_secs * 1e6) as u64;
    // Per room this device sends to: the next number, and when it is due.
    let interval_us = if pair_rate > 0.0 { (1e6 / pair_rate) as u64 } else { u64::MAX };
    let sends = device.sends_to.len();
    // Stagger the senders so that they do not all fire at once.
    let offset = (device.user as u64 * 7919) % interval_us.max(1);
    let mut next_number: HashMap<u64, u64> = device.sends_to.iter().map(|&r| (r, 0)).collect();
    // Sends to make now, in order: resends after a reconnect first, then retries, then new ones.
    let mut retry: Vec<Send> = Vec::new();
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<AckReport>();
    let mut outbox = Outbox::default();
    let mut latest_seq: HashMap<u64, u64> = HashMap::new();
    let mut last_receipt = Instant::now();
    let seed = device.user_id ^ (device.token.len() as u64).rotate_left(17) ^ device.source.map_or(0, ip_bits);
    let mut next_churn_us = next_churn(churn_mean_secs, start_us, seed);

    loop {
        let now = unix_micros();
        if now >= drain_until && outbox.is_empty() {
            break;
        }
        // Sends that are due (fixed rate: each keeps its intended time, however late).
        if sends > 0 && now < end_us {
            for &room in &device.sends_to {
                let number = next_number[&room];
                let intended = start_us + offset + number * interval_us;
                if intended <= now && intended < end_us {
                    retry.push(Send { room, number, intended_us: intended });
                    *next_number.get_mut(&room).expect("known room") += 1;
                }
            }
        }
        for send in std::mem::take(&mut retry) {
            let Send { room, number, intended_us: intended } = send;
            if behaviour.typing && number % 5 == 0 {
                let _ = conn.start_request(Req::Typing(wire::TypingRequest { room_id: room, active: true })).await;
            }
            let request = Req::SendMessage(wire::SendMessageRequest {
                room_id: room,
                client_msg_id: format!("{}.{}.{}.{}", behaviour.phase, device.user_id, room, number),
                text: message_text(behaviour.phase, number, intended, behaviour.body_bytes),
                reply_to_seq: 0,
                media_ids: Vec::new(),
            });
            let tag = outbox.sent(send);
            match conn.start_request(request).await {
                Ok(answer) => {
                    let acks_tx = acks_tx.clone();
                    tokio::spawn(async move {
                        let ok = matches!(
                            tokio::time::timeout(Duration::from_secs(30), answer).await,
                            Ok(Ok(Ok(wire::reply::Result::Sent(_))))
                        );
                        let _ = acks_tx.send(AckReport { room, number, tag, ok });
                    });
                }
                Err(_) => {
                    let _ = acks_tx.send(AckReport { room, number, tag, ok: false });
                }
            }
        }
        // Churn: drop the connection abruptly, stay away a moment, resume from the last position.
        if churn_mean_secs > 0.0 && now >= next_churn_us && now < end_us {
            drop(conn);
            out.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(50 + now % 150)).await;
            conn = reconnect(&device, last_pos).await?;
            resend_first(&mut retry, outbox.reconnected());
            next_churn_us = next_churn(churn_mean_secs, unix_micros(), seed);
        }
        if behaviour.read_receipts && last_receipt.elapsed() >= Duration::from_secs(1) {
            last_receipt = Instant::now();
            for (&room, &seq) in &latest_seq {
                let kind = wire::ReceiptKind::Read as i32;
                let _ = conn
                    .start_request(Req::Receipt(wire::ReceiptRequest { room_id: room, kind, up_to_seq: seq }))
                    .await;
            }
            latest_seq.clear();
        }
        // Sleep until the next thing this device has to do, unless something arrives first.
        let mut wake_us = drain_until.max(unix_micros() + 1000);
        if sends > 0 {
            for &room in &device.sends_to {
                let intended = start_us + offset + next_number[&room] * interval_us;
                if intended < end_us {
                    wake_us = wake_us.min(intended);
                }
            }
        }
        if next_churn_us < end_us {
            wake_us = wake_us.min(next_churn_us);
        }
        if behaviour.read_receipts && !latest_seq.is_empty() {
            wake_us = wake_us.min(unix_micros() + 1_000_000);
        }
        tokio::select! {
            incoming = conn.next() => match incoming {
                Some(Incoming::Event(event)) => {
                    if event.pos <= last_pos {
                        continue;
                    }
                    last_pos = event.pos;
                    let Some(wire::event::Kind::Entry(entry)) = event.kind else { continue };
                    let Some(wire::room_entry::Body::Text(text)) = &entry.body else { continue };
                    let Some((number, intended_us)) = parse_text(&text.text, behaviour.phase) else { continue };
                    let nth = progress.delivered.fetch_add(1, Ordering::Relaxed) + 1;
                    if faults.drop_delivery == Some(nth) {
                        continue;
                    }
                    out.deliveries += 1;
                    out.delivery_latency.record_micros(unix_micros().saturating_sub(intended_us));
                    out.log.entry((entry.room_id, entry.sender_id)).or_default().record(number);
                    latest_seq.insert(entry.room_id, entry.seq);
                }
                Some(Incoming::Closed(_)) | None => {
                    if unix_micros() >= drain_until && outbox.is_empty() {
                        break;
                    }
                    out.reconnects += 1;
                    conn = reconnect(&device, last_pos).await?;
                    resend_first(&mut retry, outbox.reconnected());
                }
                Some(_) => {}
            },
            Some(report) = acks.recv() => match outbox.answered(report.room, report.number, report.tag, report.ok) {
                // An acknowledgement after the drain ended comes too late to be owed to the
                // receivers, which have stopped listening: it counts as not acknowledged in time.
                Answer::Acked(_) if unix_micros() >= drain_until => out.send_failures += 1,
                Answer::Acked(send) => {
                    *out.sent.entry((send.room, device.user_id)).or_default() += 1;
                    out.ack_latency.record_micros(unix_micros().saturating_sub(send.intended_us));
                    progress.acked.fetch_add(1, Ordering::Relaxed);
                }
                Answer::Failed(send) if unix_micros() < drain_until => {
                    // Retry with the same client_msg_id: the server never stores a message twice.
                    out.send_retries += 1;
                    retry.push(send);
                }
                Answer::Failed(send) => {
                    out.send_failures += 1;
                    outbox.give_up(send);
                }
                Answer::Stale => {}
            },
            _ = tokio::time::sleep(Duration::from_micros(wake_us.saturating_sub(unix_micros()))) => {}
        }
    }
    Ok(out)
}

async fn reconnect(device: &Device, last_pos: u64) -> anyhow::Result<Connection> {
    let mut wait = Duration::from_millis(50);
    for _ in 0..20 {
        match Connection::connect_from(device.source, &device.ws, &device.token, Encoding::Protobuf).await {
            Ok(conn) => {
                conn.sync(last_pos).await?;
                return Ok(conn);
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
    anyhow::bail!("device of user {} could not reconnect", device.user_id)
}

fn ip_bits(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) as u64,
    }
}

/// When a device next goes offline: exponential inter-arrival times (a Poisson process of mean
/// `mean_secs`), from a cheap hash of the clock and the device's own seed.
fn next_churn(mean_secs: f64, now_us: u64, seed: u64) -> u64 {
    if mean_secs <= 0.0 {
        return u64::MAX;
    }
    let mut x = now_us ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let uniform = (x >> 11) as f64 / (1u64 << 53) as f64;
    now_us.saturating_add((-(1.0 - uniform).ln() * mean_secs * 1e6) as u64)
}
