//! One WebSocket connection: a single task that reads client frames, dispatches requests, writes
//! answers and events, sends heartbeats and closes.
//!
//! Flow control, all bounded:
//! - answers: at most `max_in_flight_requests` requests await an answer; reading pauses at the limit
//!   (the answer queue has exactly that capacity, so an answer always fits);
//! - events: the user actor puts them in a queue of `outbound_queue_events` items and
//!   `outbound_queue_bytes` bytes (`OutboundBudget`); when it is full the actor moves this
//!   connection to catching up from the store, and past the slow-consumer grace it drops the
//!   queue: the connection then sends RESYNC_REQUIRED and closes with 1008;
//! - writes: frames are encoded straight into the socket's outbox (`websocket.rs`), so a burst
//!   leaves in one write. Below it the outbox holds at most `OUTBOX_BYTES` and actix-http's write
//!   buffer 32 KiB before a write waits; a write that waits `write_timeout_secs` (the client
//!   stopped reading) ends the connection the same way: RESYNC_REQUIRED, then close 1008, queued
//!   behind what the socket already holds (each waiting up to `write_timeout_secs` more).

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tidings_proto::Encoding;
use tidings_proto::v1::ServerFrame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::connection_caps::CapsGuard;
use super::decode::{decode_frame, peek_request_id, to_request};
use super::dispatch::{Caller, dispatch};
use super::encode::{
    answer_frame, ephemeral_frame, error_frame, going_away_frame, notice_frame, write_event, write_frame,
};
use super::websocket::{ClientMessage, CloseCode, CloseReason, Gone, Inbox, Outbox, ProtocolError};
use crate::actors::{
    Attach, BoxedAnswer, Detach, Hub, Notice, Outbound, OutboundBudget, Replier, UserEntry, event_bytes,
};
use crate::auth::{AuthService, Authenticated};
use crate::config::LimitsConfig;
use crate::domain::error::{Code, DomainError};
use crate::domain::{ConnId, StreamEvent, now_ms};
use crate::metrics::METRICS;
use crate::rate_limit::TokenBucket;

/// Everything a connection needs besides its socket.
pub struct ConnectionSetup {
    pub hub: Arc<Hub>,
    pub auth: Authenticated,
    /// Checks the fresh tokens of Reauthenticate requests.
    pub auth_service: Arc<AuthService>,
    pub encoding: Encoding,
    pub shutdown: watch::Receiver<bool>,
    /// This connection's place under the node's connection cap, released when it ends.
    pub slot: OwnedSemaphorePermit,
    /// Its places under the per-user and per-address caps, likewise.
    pub caps: CapsGuard,
}

/// Why the loop ended, and what to tell the client.
enum End {
    ClientClosed,
    Close(CloseReason),
    /// The client stopped reading, or was too slow for too long: RESYNC_REQUIRED, then 1008.
    FellBehind,
}

fn close(code: CloseCode, description: &str) -> End {
    End::Close(CloseReason { code, description: Some(description.into()) })
}

/// What may wait in a connection's outbox for the socket (beyond it, actix-http's write buffer):
/// a burst of small frames fits, and a client that stops reading holds little.
pub const OUTBOX_BYTES: usize = 16 * 1024;

struct Writer {
    outbox: Outbox,
    encoding: Encoding,
    write_timeout: Duration,
}

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// The connection is gone.
    Gone,
    /// It waited `write_timeout` for room: the client is not reading. The frame did not go.
    Stalled,
}

impl Writer {
    /// Writes one frame, waiting at most `write_timeout` for room.
    async fn send(&mut self, frame: &ServerFrame) -> Sent {
        let encoding = self.encoding;
        self.when_room(|outbox| outbox.write(|dst| write_frame(encoding, frame, dst))).await
    }

    async fn send_event(&mut self, pos: u64, event: &StreamEvent) -> Sent {
        let encoding = self.encoding;
        self.when_room(|outbox| outbox.write(|dst| write_event(encoding, pos, event, dst))).await
    }

    /// Control frames wait for room like any other (a client that stopped reading has none).
    async fn ping(&mut self) -> Sent {
        self.when_room(|outbox| outbox.ping(b"")).await
    }

    async fn pong(&mut self, payload: &[u8]) -> Sent {
        self.when_room(|outbox| outbox.pong(payload)).await
    }

    /// Writes one message once the outbox has room.
    async fn when_room(&mut self, write: impl FnOnce(&Outbox)) -> Sent {
        match self.room().await {
            Ok(()) => {
                write(&self.outbox);
                Sent::Yes
            }
            Err(sent) => sent,
        }
    }

    /// Waits at most `write_timeout` for the outbox to have room.
    async fn room(&self) -> Result<(), Sent> {
        // The usual case, without arming a timer.
        if let Some(now) = self.outbox.has_room() {
            return now.map_err(|Gone| Sent::Gone);
        }
        match tokio::time::timeout(self.write_timeout, self.outbox.room()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Gone)) => Err(Sent::Gone),
            Err(_) => Err(Sent::Stalled),
        }
    }

    /// The close frame, if the client takes it in time; the connection ends either way.
    async fn close(self, reason: Option<CloseReason>) {
        if self.room().await.is_ok() {
            self.outbox.close(reason);
        }
    }
}

pub async fn run(setup: ConnectionSetup, outbox: Outbox, mut inbox: Inbox) {
    let ConnectionSetup { hub, auth, auth_service, encoding, mut shutdown, slot: _slot, caps: _caps } = setup;
    let limits = hub.limits.clone();
    let conn = ConnId::next();
    let span = tracing::info_span!("conn", %conn, user = %auth.user, device = %auth.device);
    let _entered = span.enter();
    METRICS.connections_open.inc();
    METRICS.connections_total.inc();

    let (outbound_tx, mut outbound) = mpsc::channel(limits.outbound_queue_events.max(1));
    let budget = Arc::new(OutboundBudget::new(limits.outbound_queue_bytes.max(1)));
    let in_flight_cap = limits.max_in_flight_requests.max(1);
    let (answers_tx, mut answers) = mpsc::channel::<BoxedAnswer>(in_flight_cap);
    let writer = Writer { outbox, encoding, write_timeout: Duration::from_secs(limits.write_timeout_secs.max(1)) };

    let Some(user_actor) = attach(&hub, auth, conn, outbound_tx, &budget).await else {
        writer.close(None).await;
        METRICS.connections_open.dec();
        return;
    };
    // The connection lives as long as its access token (extended by Reauthenticate).
    let expires_at_ms = Arc::new(AtomicI64::new(auth.expires_at_ms));
    let token_expiry = tokio::time::sleep_until(until_ms(auth.expires_at_ms));
    tokio::pin!(token_expiry);
    let heartbeat_every = Duration::from_secs(limits.heartbeat_interval_secs.max(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
    let mut connection = Connection {
        bucket: TokenBucket::new(limits.requests_per_second, limits.request_burst),
        idle_timeout: Duration::from_secs(limits.idle_timeout_secs.max(1)),
        caller: Caller {
            hub: hub.clone(),
            auth,
            auth_service,
            expires_at_ms: expires_at_ms.clone(),
            conn,
            user_actor: user_actor.clone(),
        },
        writer,
        limits,
        in_flight: Arc::new(Semaphore::new(in_flight_cap)),
        answers: answers_tx,
        last_heard: Instant::now(),
        last_event_pos: 0,
        budget,
        bad_frames_in_a_row: 0,
    };
    tracing::debug!("connected");

    // One future for the whole connection: a fresh `changed()` per loop would join and leave the
    // watch's waiter list (a lock) on every frame written.
    let shutting_down = shutdown.changed();
    tokio::pin!(shutting_down);
    let end = loop {
        let step = tokio::select! {
            biased;
            _ = &mut shutting_down => Break(connection.on_shutdown().await),
            Some(answer) = answers.recv() => connection.on_answer(answer).await,
            out = outbound.recv() => connection.on_outbound(out).await,
            message = inbox.recv(), if connection.in_flight.available_permits() > 0 => {
                connection.on_message(message).await
            }
            _ = &mut token_expiry => match expires_at_ms.load(Ordering::Acquire) {
                // Reauthenticated meanwhile: wait for the new expiry.
                later if later > now_ms() => {
                    token_expiry.as_mut().reset(until_ms(later));
                    Continue(())
                }
                _ => connection.on_token_expired().await,
            },
            _ = heartbeat.tick() => connection.on_heartbeat().await,
        };
        if let Break(end) = step {
            break end;
        }
    };

    let _ = user_actor.addr.send(Detach { conn }).await;
    let Connection { mut writer, last_event_pos, .. } = connection;
    let reason = match end {
        End::ClientClosed => None,
        End::Close(reason) => Some(reason),
        End::FellBehind => {
            METRICS.connections_fell_behind_total.inc();
            tracing::info!(pos = last_event_pos, "the client fell behind; told to resync");
            // Behind what the socket already holds: a client that reads again in time gets it.
            writer.send(&notice_frame(&Notice::ResyncRequired { pos: last_event_pos })).await;
            Some(CloseReason { code: CloseCode::Policy, description: Some("fell behind; reconnect and sync".into()) })
        }
    };
    // A client that stopped reading cannot take a close frame either: bounded, like every write.
    writer.close(reason).await;
    METRICS.connections_open.dec();
    tracing::debug!("disconnected");
}

/// What the connection task keeps between events: one method per source of events.
struct Connection {
    writer: Writer,
    caller: Caller,
    limits: LimitsConfig,
    bucket: TokenBucket,
    /// Requests awaiting an answer, at most `max_in_flight_requests`; reading pauses at the limit.
    in_flight: Arc<Semaphore>,
    answers: mpsc::Sender<BoxedAnswer>,
    idle_timeout: Duration,
    last_heard: Instant,
    /// The last stream position handed to the socket, for RESYNC_REQUIRED.
    last_event_pos: u64,
    /// The bytes of events queued for this connection, shared with the user actor.
    budget: Arc<OutboundBudget>,
    bad_frames_in_a_row: u32,
}

/// Whether the connection goes on, or ends and how.
type Step = ControlFlow<End>;

/// `Continue` if the write went out, else the end of the connection.
fn written(sent: Sent) -> Step {
    match sent {
        Sent::Yes => Continue(()),
        Sent::Gone => Break(End::ClientClosed),
        Sent::Stalled => Break(End::FellBehind),
    }
}

impl Connection {
    async fn on_shutdown(&mut self) -> End {
        self.writer.send(&going_away_frame()).await;
        close(CloseCode::Away, "server shutting down")
    }

    async fn on_answer(&mut self, answer: BoxedAnswer) -> Step {
        if answer.result.is_err() {
            METRICS.request_errors_total.inc();
        }
        written(self.writer.send(&answer_frame(&answer)).await)
    }

    /// What the user actor sent: events, pages, ephemeral events, notices; `None` when it dropped
    /// this connection for falling too far behind.
    async fn on_outbound(&mut self, out: Option<Outbound>) -> Step {
        let Some(out) = out else { return Break(End::FellBehind) };
        match self.write_outbound(out).await {
            Written::Sent(sent) => written(sent),
            Written::LoggedOut => Break(close(CloseCode::Policy, "logged out")),
            Written::Disconnected => Break(close(CloseCode::Policy, "disconnected by the app's server")),
        }
    }

    async fn on_message(&mut self, message: Option<Result<ClientMessage, ProtocolError>>) -> Step {
        self.last_heard = Instant::now();
        let payload = match message {
            None | Some(Ok(ClientMessage::Close)) => return Break(End::ClientClosed),
            Some(Ok(ClientMessage::Ping(bytes))) => return written(self.writer.pong(&bytes).await),
            Some(Ok(ClientMessage::Pong)) => return Continue(()),
            Some(Ok(ClientMessage::Binary(bytes))) => (Encoding::Protobuf, bytes),
            Some(Ok(ClientMessage::Text(text))) => (Encoding::Json, text),
            Some(Err(ProtocolError::Overflow)) => {
                let e = DomainError::new(
                    Code::PayloadTooLarge,
                    format!("frames are limited to {} bytes", self.limits.max_frame_bytes),
                );
                self.writer.send(&error_frame(0, &e)).await;
                return Break(close(CloseCode::Size, "frame too large"));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "protocol error");
                return Break(close(CloseCode::Protocol, "websocket protocol error"));
            }
        };
        self.on_frame(payload.0, &payload.1).await
    }

    /// One client frame: limited, decoded, dispatched.
    async fn on_frame(&mut self, encoding: Encoding, payload: &[u8]) -> Step {
        METRICS.requests_total.inc();
        // Limits first: a frame costs a token whether or not it decodes, and one over the limit is
        // read only for its request id.
        let now = Instant::now();
        let limited = self.bucket.take(now).and_then(|()| self.caller.user_actor.take_request(now));
        if let Err(retry_after_ms) = limited {
            METRICS.request_errors_total.inc();
            let e = DomainError { retry_after_ms, ..DomainError::new(Code::RateLimited, "too many requests") };
            return written(self.writer.send(&error_frame(peek_request_id(encoding, payload), &e)).await);
        }
        let request = decode_frame(encoding, payload).and_then(|frame| to_request(frame, self.limits.max_history_page));
        let (request_id, request) = match request {
            Ok(ok) => ok,
            Err((request_id, e)) => return self.on_bad_frame(request_id, &e).await,
        };
        self.bad_frames_in_a_row = 0;
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            unreachable!("reading is paused while no permit is free");
        };
        // Boxed: awaited inline, the largest request's state would sit in every connection's task
        // for its whole life, idle or not.
        Box::pin(dispatch(&self.caller, request, Replier::new(request_id, self.answers.clone(), permit))).await;
        Continue(())
    }

    /// A frame that did not decode: answered, and counted (too many in a row close the connection).
    async fn on_bad_frame(&mut self, request_id: u64, e: &DomainError) -> Step {
        METRICS.request_errors_total.inc();
        if let Break(end) = written(self.writer.send(&error_frame(request_id, e)).await) {
            return Break(end);
        }
        self.bad_frames_in_a_row += 1;
        let max = self.limits.max_consecutive_bad_frames;
        if max != 0 && self.bad_frames_in_a_row >= max {
            return Break(close(CloseCode::Protocol, "too many bad frames"));
        }
        Continue(())
    }

    async fn on_token_expired(&mut self) -> Step {
        self.writer.send(&notice_frame(&Notice::TokenExpired)).await;
        Break(close(CloseCode::Policy, "access token expired"))
    }

    async fn on_heartbeat(&mut self) -> Step {
        if self.last_heard.elapsed() > self.idle_timeout {
            return Break(close(CloseCode::Away, "idle timeout"));
        }
        written(self.writer.ping().await)
    }
}

/// A tokio deadline at a wall-clock time in ms since the epoch (now, if it has passed).
fn until_ms(at_ms: i64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis((at_ms - now_ms()).max(0) as u64)
}

/// Joins the user's actor, starting one if needed. An actor that stopped between the lookup and
/// the hand-over is replaced by a fresh one.
async fn attach(
    hub: &Arc<Hub>,
    auth: Authenticated,
    conn: ConnId,
    outbound: mpsc::Sender<Outbound>,
    budget: &Arc<OutboundBudget>,
) -> Option<UserEntry> {
    for _ in 0..3 {
        let entry = hub.registry.user_or_start(auth.user, hub);
        let attach = Attach { conn, device: auth.device, outbound: outbound.clone(), budget: budget.clone() };
        if entry.addr.send(attach).await.is_ok() {
            return Some(entry);
        }
    }
    tracing::error!("could not attach to the user actor");
    None
}

enum Written {
    Sent(Sent),
    LoggedOut,
    Disconnected,
}

impl Connection {
    /// Writes what the user actor queued. An event counts as written (for RESYNC_REQUIRED's
    /// position, and off the byte budget) once the socket took it.
    async fn write_outbound(&mut self, out: Outbound) -> Written {
        let sent = match out {
            Outbound::Event(pos, event) => self.write_event(pos, &event).await,
            Outbound::Page(events, _permit) => {
                let mut sent = Sent::Yes;
                for (pos, event) in &events {
                    sent = match sent {
                        Sent::Yes => self.write_event(*pos, event).await,
                        // The connection is ending: what it will not write leaves the budget too.
                        ended => {
                            self.budget.written(event_bytes(event));
                            ended
                        }
                    };
                }
                sent
            }
            Outbound::Ephemeral(event) => self.writer.send(&ephemeral_frame(&event)).await,
            Outbound::Notice(notice) => {
                let sent = self.writer.send(&notice_frame(&notice)).await;
                match notice {
                    Notice::LoggedOut => return Written::LoggedOut,
                    Notice::Disconnected => return Written::Disconnected,
                    _ => sent,
                }
            }
        };
        Written::Sent(sent)
    }

    async fn write_event(&mut self, pos: u64, event: &StreamEvent) -> Sent {
        let sent = self.writer.send_event(pos, event).await;
        self.budget.written(event_bytes(event));
        if sent == Sent::Yes {
            self.last_event_pos = pos;
            METRICS.events_delivered_total.inc();
        }
        sent
    }
}
