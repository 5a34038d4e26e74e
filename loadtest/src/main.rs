//! `tidings-load`: drives a running tidings server with simulated phones and reports what it
//! measured. Every loop is bounded in count and time, and only loopback targets are accepted.
//!
//! Scenarios (this is the first cut; the full swarm grows from here):
//! - `idle`: hold N synced connections and read the server's resident memory before and after.
//! - `chat`: P pairs of users in direct rooms; each sender sends M messages keeping W in flight;
//!   reports acknowledged messages per second, acknowledgement latency percentiles, and checks that
//!   every receiver got every message exactly once and in order.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};
use tidings_client::{Connection, Http, Incoming};

#[derive(Parser)]
#[command(about = "Load generator for tidings (loopback targets only)")]
struct Args {
    /// The server, host:port on 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: String,
    /// Prefix for the users this run signs up (runs must not share one).
    #[arg(long, default_value = "load")]
    prefix: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold idle connections and measure the server's memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// The server's process id, to read its memory from /proc.
        #[arg(long)]
        server_pid: u32,
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// Direct chat between pairs of users at full speed.
    Chat {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// Give up after this long.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the server's /proc status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}

async fn sign_up(http: &Http, name: &str) -> anyhow::Result<wire::AuthResponse> {
    Ok(http.sign_up(name, "load-test-password", "load").await?)
}

async fn idle(args: &Args, connections: usize, server_pid: u32, settle_secs: u64) -> anyhow::Result<()> {
    let http = Http::new(format!("http://{}", args.server));
    let ws = format!("ws://{}", args.server);
    // A few users, many devices' worth of connections each (a connection costs the same either way).
    let users = (connections / 50).max(1);
    let mut tokens = Vec::new();
    for i in 0..users {
        tokens.push(sign_up(&http, &format!("{}_idle_{i}", args.prefix)).await?.access_token);
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let before = rss_kib(server_pid)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let conn = Connection::connect(&ws, &tokens[i % users], Encoding::Protobuf).await?;
        conn.sync(0).await?;
        held.push(conn);
        if (i + 1) % 1000 == 0 {
            eprintln!("  {} connections", i + 1);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = rss_kib(server_pid)?;
    let per_conn = (after.saturating_sub(before) as f64) * 1024.0 / connections as f64;
    println!("idle connections: {connections} (over {users} users), opened in {connect_secs:.1} s");
    println!("server RSS: {before} KiB before, {after} KiB after: {:.1} KiB per connection", per_conn / 1024.0);
    drop(held);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Pair {
    sender: Connection,
    receiver: Connection,
    room: u64,
}

async fn chat(
    args: &Args,
    pairs: usize,
    messages: usize,
    window: usize,
    body_bytes: usize,
    max_secs: u64,
) -> anyhow::Result<()> {
    let http = Http::new(format!("http://{}", args.server));
    let ws = format!("ws://{}", args.server);
    let mut setup = Vec::new();
    for p in 0..pairs {
        let a = sign_up(&http, &format!("{}_a_{p}", args.prefix)).await?;
        let b = sign_up(&http, &format!("{}_b_{p}", args.prefix)).await?;
        let sender = Connection::connect(&ws, &a.access_token, Encoding::Protobuf).await?;
        let mut receiver = Connection::connect(&ws, &b.access_token, Encoding::Protobuf).await?;
        receiver.sync(0).await?;
        while !matches!(receiver.next_within(Duration::from_secs(10)).await?, Incoming::Notice(_)) {}
        let room = sender.create_direct(b.user_id).await?.room_id;
        setup.push(Pair { sender, receiver, room });
    }
    let body = "x".repeat(body_bytes);
    let deadline = Duration::from_secs(max_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, pair) in setup.into_iter().enumerate() {
        let body = body.clone();
        tasks.push(tokio::spawn(async move { run_pair(p, pair, messages, window, &body, deadline).await }));
    }
    let mut latencies = Vec::with_capacity(pairs * messages);
    let mut delivered = 0usize;
    for task in tasks {
        let (lat, got) = task.await??;
        latencies.extend(lat);
        delivered += got;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let sent = latencies.len();
    println!("pairs {pairs}, messages per sender {messages}, window {window}, body {body_bytes} B");
    println!("acknowledged: {sent} messages in {secs:.2} s = {:.0} messages/s", sent as f64 / secs);
    println!(
        "ack latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
    println!("delivered to receivers: {delivered} (expected {}), in order, no duplicates", pairs * messages);
    ensure!(delivered == pairs * messages, "deliveries missing");
    Ok(())
}

/// One sender's run: returns its acknowledgement latencies and what its receiver got.
async fn run_pair(
    p: usize,
    mut pair: Pair,
    messages: usize,
    window: usize,
    body: &str,
    deadline: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(messages);
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..messages {
        ensure!(started.elapsed() < deadline, "out of time");
        let send = Req::SendMessage(wire::SendMessageRequest {
            room_id: pair.room,
            client_msg_id: format!("{p}-{i}"),
            text: body.to_owned(),
            reply_to_seq: 0,
        });
        in_flight.push_back((Instant::now(), pair.sender.start_request(send).await?));
        if in_flight.len() >= window {
            let (at, answer) = in_flight.pop_front().unwrap();
            answer.await?.map_err(|e| anyhow::anyhow!("send failed: {e:?}"))?;
            latencies.push(at.elapsed());
        }
    }
    for (at, answer) in in_flight {
        answer.await?.map_err(|e| anyhow::anyhow!("send failed: {e:?}"))?;
        latencies.push(at.elapsed());
    }
    // The receiver's stream: the Created entry, then the messages in order, each once.
    let mut next_index = 0usize;
    let mut last_pos = 0;
    while next_index < messages {
        let left = deadline.saturating_sub(started.elapsed());
        match pair.receiver.next_within(left.max(Duration::from_millis(1))).await? {
            Incoming::Event(e) => {
                ensure!(e.pos == last_pos + 1, "gap or duplicate at pos {}", e.pos);
                last_pos = e.pos;
                if let Some(wire::event::Kind::Entry(wire::RoomEntry {
                    body: Some(wire::room_entry::Body::Text(t)),
                    ..
                })) = e.kind
                {
                    ensure!(t.client_msg_id == format!("{p}-{next_index}"), "out of order: {}", t.client_msg_id);
                    next_index += 1;
                }
            }
            Incoming::Closed(reason) => bail!("receiver closed: {reason:?}"),
            _ => {}
        }
    }
    Ok((latencies, next_index))
}

fn check_loopback(server: &str) -> anyhow::Result<()> {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let ip: IpAddr = if host == "localhost" { IpAddr::from([127, 0, 0, 1]) } else { host.parse()? };
    ensure!(ip.is_loopback(), "tidings-load only targets loopback addresses (127.0.0.0/8, ::1), not {ip}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_loopback(&args.server)?;
    match args.scenario {
        Scenario::Idle { connections, server_pid, settle_secs } => {
            idle(&args, connections, server_pid, settle_secs).await
        }
        Scenario::Chat { pairs, messages, window, body_bytes, max_secs } => {
            chat(&args, pairs, messages, window, body_bytes, max_secs).await
        }
    }
}
