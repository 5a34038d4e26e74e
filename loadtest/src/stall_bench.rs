//! What clients that stop reading cost the server, and what they are told.
//!
//! R readers share a group with one sender. Each reader syncs, reads until caught up, then stops
//! reading, its socket's receive buffer a few KiB (a phone whose app went to sleep). The sender
//! writes messages of B bytes at a fixed rate until the server has told every reader to resync
//! (`tidings_connections_fell_behind_total`), or a time limit. The server's resident memory and the
//! bytes it holds queued for connections (`tidings_outbound_queued_bytes`) are sampled throughout.
//! Then every reader reads again and must find its events in order, RESYNC_REQUIRED naming the last
//! of them, and close 1008.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req, server_frame::Frame};
use tidings_client::tidings_proto::{Encoding, paths};
use tidings_client::{Connection, Http};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::procfs::rss_kib;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub struct StallBench {
    pub server: String,
    pub server_pid: u32,
    pub prefix: String,
    pub readers: usize,
    pub body_bytes: usize,
    pub messages_per_sec: f64,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct StallReport {
    pub readers: usize,
    pub sent: usize,
    pub secs_until_all_told: f64,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub peak_queued_bytes: u64,
    /// Readers that found their events in order, then RESYNC_REQUIRED naming the last, then 1008.
    pub told_and_closed: usize,
    /// Events the readers got before the notice, in all.
    pub events_before_notice: u64,
}

impl StallReport {
    pub fn kib_per_reader(&self) -> f64 {
        self.rss_peak_kib.saturating_sub(self.rss_before_kib) as f64 / self.readers.max(1) as f64
    }
}

/// A reader's socket, with a receive buffer of a few KiB so that the server feels the stall.
async fn stalled_socket(server: &str, token: &str) -> anyhow::Result<Socket> {
    let addr = tokio::net::lookup_host(server).await?.next().context("resolving the server")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let mut request = format!("ws://{server}{}", paths::WEBSOCKET).into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

/// The next server frame, or the close code.
async fn next_frame(socket: &mut Socket, wait: Duration) -> anyhow::Result<Result<Frame, Option<CloseCode>>> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await.context("no frame in time")? {
            Some(Ok(Message::Binary(bytes))) => {
                let frame = wire::ServerFrame::decode(bytes)?.frame.context("an empty frame")?;
                return Ok(Ok(frame));
            }
            Some(Ok(Message::Close(close))) => return Ok(Err(close.map(|c| c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Err(None)),
        }
    }
}

/// Syncs from 0 and reads until CAUGHT_UP; the last position read.
async fn sync_to_live(socket: &mut Socket) -> anyhow::Result<u64> {
    let sync = wire::ClientFrame {
        request_id: 1,
        request: Some(Req::Sync(wire::SyncRequest { after_pos: 0, ..Default::default() })),
    };
    socket.send(Message::Binary(sync.encode_to_vec().into())).await?;
    let mut last = 0;
    loop {
        match next_frame(socket, Duration::from_secs(30)).await? {
            Ok(Frame::Event(e)) => last = e.pos,
            Ok(Frame::Notice(n)) if n.kind == wire::NoticeKind::CaughtUp as i32 => return Ok(last),
            Ok(_) => {}
            Err(code) => anyhow::bail!("closed while syncing: {code:?}"),
        }
    }
}

/// Reads a stalled socket to its end: the events in order after `last`, then RESYNC_REQUIRED
/// naming the last of them, then close 1008. Returns how many events came before the notice.
async fn read_to_the_end(mut socket: Socket, mut last: u64) -> anyhow::Result<u64> {
    let mut events = 0;
    loop {
        match next_frame(&mut socket, Duration::from_secs(60)).await? {
            Ok(Frame::Event(e)) => {
                ensure!(e.pos == last + 1, "event {} after {last}", e.pos);
                last = e.pos;
                events += 1;
            }
            Ok(Frame::Notice(n)) if n.kind == wire::NoticeKind::ResyncRequired as i32 => {
                ensure!(n.pos == last, "RESYNC_REQUIRED at {} after event {last}", n.pos);
                break;
            }
            Ok(_) => {}
            Err(code) => anyhow::bail!("closed ({code:?}) without RESYNC_REQUIRED after {events} events"),
        }
    }
    match next_frame(&mut socket, Duration::from_secs(60)).await? {
        Err(Some(CloseCode::Policy)) => Ok(events),
        other => anyhow::bail!("after RESYNC_REQUIRED: {other:?}, not close 1008"),
    }
}

/// A number from the server's `/metrics`.
async fn metric(http: &Http, name: &str) -> anyhow::Result<u64> {
    let (_, text) = http.get_text("/metrics").await?;
    let value = text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')));
    Ok(value.with_context(|| format!("{name} in /metrics"))?.trim().parse::<f64>()? as u64)
}

pub async fn run(bench: &StallBench) -> anyhow::Result<StallReport> {
    ensure!((1..=1000).contains(&bench.readers), "1 to 1,000 readers (one group holds them)");
    let http = Http::new(format!("http://{}", bench.server));
    let told_before = metric(&http, "tidings_connections_fell_behind_total").await?;
    let sender = http.sign_up(&format!("{}_sender", bench.prefix), "stall-bench-password", "bench").await?;
    let mut readers = Vec::with_capacity(bench.readers);
    for i in 0..bench.readers {
        readers.push(http.sign_up(&format!("{}_r{i}", bench.prefix), "stall-bench-password", "bench").await?);
    }
    let ws = format!("ws://{}", bench.server);
    let sending = Connection::connect(&ws, &sender.access_token, Encoding::Protobuf).await?;
    let members = readers.iter().map(|r| r.user_id).collect();
    let room = sending.create_group(&format!("{} stalled", bench.prefix), members).await?.room_id;

    let mut sockets = Vec::with_capacity(readers.len());
    for reader in &readers {
        let mut socket = stalled_socket(&bench.server, &reader.access_token).await?;
        let last = sync_to_live(&mut socket).await?;
        sockets.push((socket, last));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib(&[bench.server_pid])?;

    // The readers read nothing from here on.
    let body = "x".repeat(bench.body_bytes);
    let every = Duration::from_secs_f64(1.0 / bench.messages_per_sec);
    let (started, mut sent, mut rss_peak_kib, mut peak_queued_bytes) = (Instant::now(), 0, rss_before_kib, 0);
    let mut next_sample = started;
    let secs_until_all_told = loop {
        let now = Instant::now();
        if now >= next_sample {
            next_sample = now + Duration::from_millis(200);
            rss_peak_kib = rss_peak_kib.max(rss_kib(&[bench.server_pid])?);
            peak_queued_bytes = peak_queued_bytes.max(metric(&http, "tidings_outbound_queued_bytes").await?);
            let told = metric(&http, "tidings_connections_fell_behind_total").await? - told_before;
            if told >= bench.readers as u64 {
                break started.elapsed().as_secs_f64();
            }
            ensure!(started.elapsed() < bench.timeout, "{told} of {} readers told to resync in time", bench.readers);
        }
        sending.send_text(room, &format!("s{sent}"), &body).await?;
        sent += 1;
        tokio::time::sleep_until((started + every * sent as u32).into()).await;
    };

    // Every reader reads again.
    let reads: Vec<_> = sockets.into_iter().map(|(socket, last)| tokio::spawn(read_to_the_end(socket, last))).collect();
    let (mut told_and_closed, mut events_before_notice) = (0, 0);
    for read in reads {
        match read.await? {
            Ok(events) => {
                told_and_closed += 1;
                events_before_notice += events;
            }
            Err(e) => eprintln!("  a reader: {e:#}"),
        }
    }
    Ok(StallReport {
        readers: bench.readers,
        sent,
        secs_until_all_told,
        rss_before_kib,
        rss_peak_kib,
        peak_queued_bytes,
        told_and_closed,
        events_before_notice,
    })
}
