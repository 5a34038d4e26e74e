//! The push pipeline benchmark: a real `tidings` process, fake APNs and FCM servers in this
//! process, N offline recipients (half iOS, half Android) and one sender who messages each of
//! them once, as fast as the server acknowledges. Measures how fast notifications reach the
//! providers (notifications/s from the first to the last) and each one's latency from the
//! acknowledged send to the provider accepting it (the grace window included).
//!
//! Pushes fall due one grace window after their sends, so by default they leave at the rate the
//! sender was acknowledged, whatever the pipeline could do. With `backlog`, the server is killed
//! while every push is still in its grace window and started again once all are due: the new
//! process then drains N due pushes at once, which measures the pipeline itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{Connection, Http};
use tidings_fakes::{FakeApns, FakeFcm};

use crate::procfs::cpu_secs;
use crate::stats::Latency;

pub struct PushBench {
    pub tidings_bin: PathBuf,
    pub recipients: usize,
    /// Every provider answer waits this long (real APNs answers in tens of ms).
    pub provider_delay: Duration,
    pub apns_concurrency: usize,
    pub fcm_concurrency: usize,
    pub grace_ms: u64,
    pub timeout: Duration,
    /// Kill the server after the sends and restart it once every push is due (see above).
    pub backlog: bool,
}

pub struct PushBenchReport {
    pub recipients: usize,
    pub apns: usize,
    pub fcm: usize,
    pub send_secs: f64,
    /// From the first notification accepted to the last.
    pub push_secs: f64,
    pub notifications_per_sec: f64,
    /// From the sender's acknowledgement to the provider accepting the push.
    pub latency: Latency,
    /// Server CPU seconds while the sends were acknowledged, and from then to the last push (with a
    /// grace window longer than the sends take, the second is the push pipeline alone).
    pub server_cpu_send_secs: Option<f64>,
    pub server_cpu_push_secs: Option<f64>,
}

/// Kills the server when the benchmark ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(
    bench: &PushBench,
    data: &std::path::Path,
    settings: &[String],
) -> anyhow::Result<(ServerProcess, String)> {
    let mut command = Command::new(&bench.tidings_bin);
    command.args(["--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info,tidings::push=warn"]);
    command.arg("--data-dir").arg(data);
    for setting in settings {
        command.args(["--set", setting]);
    }
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().with_context(|| {
            format!("starting {} (build it with cargo build --release)", bench.tidings_bin.display())
        })?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let server = ServerProcess(child);
    let addr = rx.recv_timeout(Duration::from_secs(30)).context("the server did not log its address")?;
    Ok((server, addr))
}

pub async fn run(bench: &PushBench, progress: impl Fn(&str, usize, usize)) -> anyhow::Result<PushBenchReport> {
    let apns = FakeApns::start().await;
    let fcm = FakeFcm::start().await;
    apns.set_delay(bench.provider_delay);
    let data = std::env::temp_dir().join(format!("tidings-push-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let mut settings = tidings_fakes::server_settings(&apns, &fcm, &data);
    settings.extend([
        format!("apns.concurrency={}", bench.apns_concurrency),
        format!("fcm.concurrency={}", bench.fcm_concurrency),
        format!("push.grace_ms={}", bench.grace_ms),
        "store.synchronous=normal".into(),
        "auth.argon2_memory_kib=1024".into(),
        "auth.argon2_iterations=1".into(),
        // Thousands of sign-ups from one address.
        "auth.attempts_per_minute_per_ip=0".into(),
        "limits.requests_per_second=100000".into(),
        "limits.request_burst=100000".into(),
        "limits.user_requests_per_second=100000".into(),
        "limits.user_request_burst=100000".into(),
    ]);
    let (server, addr) = spawn_server(bench, &data.join("db"), &settings)?;
    let report = async {
        let sent = send_all(bench, &addr, server.0.id(), &progress).await?;
        if !bench.backlog {
            return wait_for_pushes(bench, server.0.id(), sent, &apns, &fcm, &progress).await;
        }
        if apns.accepted_count() + fcm.accepted_count() > 0 {
            bail!("pushes went out before the restart: make --grace-ms longer than the sends take");
        }
        // Killed with every push in its grace window; started again once the last is due.
        drop(server);
        let last_ack = sent.acked.values().max().copied().context("no sends")?;
        tokio::time::sleep_until((last_ack + Duration::from_millis(bench.grace_ms + 200)).into()).await;
        let (server, _) = spawn_server(bench, &data.join("db"), &settings)?;
        let started = Sent { cpu_after: cpu_secs(&[server.0.id()]), ..sent };
        wait_for_pushes(bench, server.0.id(), started, &apns, &fcm, &progress).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&data);
    report
}

/// What the sends left for the pushes to be measured against.
struct Sent {
    /// Each room's send, and when it was acknowledged.
    acked: HashMap<u64, Instant>,
    send_secs: f64,
    /// The server's CPU seconds spent on the sends, and its CPU counter after them.
    cpu_spent: Option<f64>,
    cpu_after: Option<f64>,
}

/// Signs the recipients up (each registers a token and leaves), then sends one message to each.
async fn send_all(
    bench: &PushBench,
    addr: &str,
    server_pid: u32,
    progress: &impl Fn(&str, usize, usize),
) -> anyhow::Result<Sent> {
    let http = Http::new(format!("http://{addr}"));
    let ws = format!("ws://{addr}");
    let sender = http.sign_up("sender", "bench-password", "phone").await?;
    let sender_conn = Connection::connect(&ws, &sender.access_token, Encoding::Protobuf).await?;
    // Recipients sign up, register a token and leave, 32 at a time.
    let n = bench.recipients;
    let recipients: Vec<anyhow::Result<u64>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (http, ws) = (http.clone(), ws.clone());
            async move {
                let auth = http.sign_up(&format!("r{i:06}"), "bench-password", "phone").await?;
                let conn = Connection::connect(&ws, &auth.access_token, Encoding::Protobuf).await?;
                let registration = if i % 2 == 0 {
                    wire::SetPushTokenRequest {
                        platform: wire::PushPlatform::Ios as i32,
                        token: format!("{:064x}", i + 1),
                        app_id: "app.tidings.bench".into(),
                        ..Default::default()
                    }
                } else {
                    wire::SetPushTokenRequest {
                        platform: wire::PushPlatform::Android as i32,
                        token: format!("bench{i}:APA91b{:0128x}", i + 1),
                        ..Default::default()
                    }
                };
                conn.set_push_token(registration).await?;
                conn.close().await;
                Ok(auth.user_id)
            }
        })
        .buffered(32)
        .collect()
        .await;
    let recipients: Vec<u64> = recipients.into_iter().collect::<anyhow::Result<_>>()?;
    let mut rooms = Vec::with_capacity(n);
    for (i, id) in recipients.iter().enumerate() {
        rooms.push(sender_conn.create_direct(*id).await?.room_id);
        if i % 100 == 0 {
            progress("rooms", i, n);
        }
    }
    // Let the recipients' sessions end on the server.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Send one message per room, 64 in flight; remember when each was acknowledged.
    let cpu_before = cpu_secs(&[server_pid]);
    let send_started = Instant::now();
    let acked: Vec<anyhow::Result<(u64, Instant)>> = futures_util::stream::iter(rooms.iter().copied().enumerate())
        .map(|(i, room)| {
            let conn = &sender_conn;
            async move {
                conn.send_text(room, &format!("m{i}"), "push bench message").await?;
                Ok((room, Instant::now()))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let acked: HashMap<u64, Instant> = acked.into_iter().collect::<anyhow::Result<_>>()?;
    let send_secs = send_started.elapsed().as_secs_f64();
    let cpu_sent = cpu_secs(&[server_pid]);
    Ok(Sent { acked, send_secs, cpu_spent: cpu_before.zip(cpu_sent).map(|(a, b)| b - a), cpu_after: cpu_sent })
}

/// Waits for one push per recipient, checks there was exactly one each, and reports.
async fn wait_for_pushes(
    bench: &PushBench,
    server_pid: u32,
    sent: Sent,
    apns: &FakeApns,
    fcm: &FakeFcm,
    progress: &impl Fn(&str, usize, usize),
) -> anyhow::Result<PushBenchReport> {
    let Sent { acked, send_secs, cpu_spent: server_cpu_send_secs, cpu_after: cpu_sent } = sent;
    let n = bench.recipients;
    let deadline = Instant::now() + bench.timeout;
    loop {
        let done = apns.accepted_count() + fcm.accepted_count();
        progress("pushes", done, n);
        if done >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} pushes arrived within {:?}", bench.timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_pushed = cpu_secs(&[server_pid]);
    let server_cpu_push_secs = cpu_sent.zip(cpu_pushed).map(|(a, b)| b - a);
    // Exactly once: after a moment for stragglers, one push per recipient and no more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latency = Latency::default();
    let mut times = Vec::with_capacity(n);
    let room_of = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
    let apns_pushes = apns.accepted();
    let fcm_pushes = fcm.accepted();
    let accepted = apns_pushes
        .iter()
        .map(|p| (room_of(&p.payload["room_id"]), p.accepted_at))
        .chain(fcm_pushes.iter().map(|p| (room_of(&p.message["data"]["room_id"]), p.accepted_at)));
    for (room, at) in accepted {
        let sent = room.and_then(|r| acked.get(&r)).context("a push for a room nobody sent to")?;
        latency.record_micros(at.saturating_duration_since(*sent).as_micros() as u64);
        times.push(at);
    }
    let rooms: std::collections::HashSet<Option<u64>> = apns_pushes
        .iter()
        .map(|p| room_of(&p.payload["room_id"]))
        .chain(fcm_pushes.iter().map(|p| room_of(&p.message["data"]["room_id"])))
        .collect();
    if times.len() != n || rooms.len() != n {
        bail!("expected exactly {n} pushes to {n} rooms, got {} pushes to {} rooms", times.len(), rooms.len());
    }
    let first = times.iter().min().copied().context("no pushes")?;
    let last = times.iter().max().copied().context("no pushes")?;
    let push_secs = last.duration_since(first).as_secs_f64().max(1e-3);
    Ok(PushBenchReport {
        recipients: n,
        apns: apns_pushes.len(),
        fcm: fcm_pushes.len(),
        send_secs,
        push_secs,
        notifications_per_sec: n as f64 / push_secs,
        latency,
        server_cpu_send_secs,
        server_cpu_push_secs,
    })
}
