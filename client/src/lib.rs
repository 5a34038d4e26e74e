//! A small tidings client: HTTP auth calls and a WebSocket connection that matches answers to
//! requests by id and hands everything else (events, ephemeral events, notices) to the caller in
//! arrival order. Used by the integration tests and the load swarm.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tidings_proto::Encoding;
use tidings_proto::v1::{
    self as wire, AuthResponse, ClientFrame, HttpError, LogInRequest, LogOutRequest, RefreshRequest, ServerFrame,
    SignUpRequest, client_frame::Request as Req, reply::Result as ReplyResult, server_frame::Frame,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

pub use tidings_proto;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered an HTTP request (or the WebSocket upgrade) with an error.
    #[error("HTTP {status}: {body:?}")]
    Http { status: u16, body: Option<HttpError> },
    /// The server answered a WebSocket request with a typed error.
    #[error("server error {:?}: {}", wire::ErrorCode::try_from(.0.code).unwrap_or_default(), .0.message)]
    Server(wire::Error),
    #[error("transport: {0}")]
    Transport(String),
    #[error("the connection is closed")]
    Closed,
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    /// The wire error code, for HTTP and WebSocket errors alike.
    pub fn code(&self) -> Option<wire::ErrorCode> {
        match self {
            ClientError::Http { body: Some(b), .. } => wire::ErrorCode::try_from(b.code).ok(),
            ClientError::Server(e) => wire::ErrorCode::try_from(e.code).ok(),
            _ => None,
        }
    }
}

/// The HTTP side: sign up, log in, refresh, log out.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    /// `base` is like `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        // Where reqwest is built with rustls (it is, in this workspace), it needs a crypto provider
        // installed first; installing one that is installed already is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { base: base.into(), client: reqwest::Client::new() }
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut request = self.client.post(format!("{}{}", self.base, path)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(ClientError::Http { status: status.as_u16(), body: serde_json::from_slice(&bytes).ok() });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(format!("bad response body: {e}")))
    }

    pub async fn sign_up(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<AuthResponse, ClientError> {
        let body =
            SignUpRequest { username: username.into(), password: password.into(), device_name: device_name.into() };
        self.post(tidings_proto::paths::SIGN_UP, &body, None).await
    }

    pub async fn log_in(&self, username: &str, password: &str, device_name: &str) -> Result<AuthResponse, ClientError> {
        let body =
            LogInRequest { username: username.into(), password: password.into(), device_name: device_name.into() };
        self.post(tidings_proto::paths::LOG_IN, &body, None).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<AuthResponse, ClientError> {
        let body = RefreshRequest { refresh_token: refresh_token.into() };
        self.post(tidings_proto::paths::REFRESH, &body, None).await
    }

    pub async fn log_out(&self, access_token: &str, all_devices: bool) -> Result<(), ClientError> {
        let body = LogOutRequest { all_devices };
        let _: wire::Success = self.post(tidings_proto::paths::LOG_OUT, &body, Some(access_token)).await?;
        Ok(())
    }

    /// GETs a plain-text endpoint (`/healthz`, `/metrics`); returns status and body.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let response = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| ClientError::Transport(e.to_string()))?))
    }
}

/// Something the server sent that is not an answer to a pending request.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event(wire::Event),
    Ephemeral(wire::Ephemeral),
    Notice(wire::Notice),
    /// An error that answers no pending request (request id 0: an undecodable frame).
    Error(wire::Error),
    /// The server closed the connection, with its close code and reason.
    Closed(Option<(u16, String)>),
}

/// Requests awaiting their answer. Once the reader has seen the connection end it sets `closed`
/// (under the same lock), so no request can be left waiting for an answer that cannot come.
#[derive(Default)]
struct PendingState {
    waiters: HashMap<u64, oneshot::Sender<Result<ReplyResult, wire::Error>>>,
    closed: bool,
}

type Pending = Arc<Mutex<PendingState>>;

/// One WebSocket connection.
pub struct Connection {
    encoding: Encoding,
    outgoing: mpsc::Sender<Message>,
    pending: Pending,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    next_request_id: AtomicU64,
    /// How long `request` waits for its answer.
    pub request_timeout: Duration,
    /// The reader and writer tasks; aborted on drop so that dropping a connection closes its socket.
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `ws_base` (like `ws://127.0.0.1:8080`) with an access token.
    pub async fn connect(ws_base: &str, access_token: &str, encoding: Encoding) -> Result<Self, ClientError> {
        Self::connect_from(None, ws_base, access_token, encoding).await
    }

    /// Like `connect`, from a chosen local address: one address gives only ~28k ports, so a swarm
    /// spreads its connections over 127.0.0.x.
    pub async fn connect_from(
        source: Option<std::net::IpAddr>,
        ws_base: &str,
        access_token: &str,
        encoding: Encoding,
    ) -> Result<Self, ClientError> {
        let query = match encoding {
            Encoding::Protobuf => "",
            Encoding::Json => "?encoding=json",
        };
        let mut request = format!("{ws_base}{}{query}", tidings_proto::paths::WEBSOCKET)
            .into_client_request()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let bearer =
            format!("Bearer {access_token}").parse().map_err(|_| ClientError::Transport("bad token".into()))?;
        request.headers_mut().insert("authorization", bearer);
        match source {
            None => Self::connect_request(request, encoding).await,
            Some(ip) => {
                let host = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
                let target = tokio::net::lookup_host(&host)
                    .await
                    .map_err(|e| ClientError::Transport(e.to_string()))?
                    .next()
                    .ok_or_else(|| ClientError::Transport(format!("cannot resolve {host}")))?;
                let socket = match ip {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                }
                .map_err(|e| ClientError::Transport(e.to_string()))?;
                socket.bind((ip, 0).into()).map_err(|e| ClientError::Transport(format!("binding {ip}: {e}")))?;
                let stream = socket.connect(target).await.map_err(|e| ClientError::Transport(e.to_string()))?;
                let _ = stream.set_nodelay(true);
                let (socket, _) = tokio_tungstenite::client_async(request, stream).await.map_err(handshake_error)?;
                Ok(Self::start(socket, encoding))
            }
        }
    }

    /// Connects with a request built by the caller (tests use it to try bad tokens and URLs).
    pub async fn connect_request(
        request: tungstenite::handshake::client::Request,
        encoding: Encoding,
    ) -> Result<Self, ClientError> {
        // Small frames, latency-bound: no Nagle.
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(request, None, true).await.map_err(handshake_error)?;
        Ok(Self::start(socket, encoding))
    }

    fn start<S>(socket: tokio_tungstenite::WebSocketStream<S>, encoding: Encoding) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut to_send) = mpsc::channel::<Message>(1024);
        let (deliver, incoming) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();

        let writer = tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
        });
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            let mut close = None;
            while let Some(message) = stream.next().await {
                let frame = match message {
                    Ok(Message::Binary(bytes)) => ServerFrame::decode(bytes.as_ref()).ok(),
                    Ok(Message::Text(text)) => serde_json::from_str::<ServerFrame>(text.as_str()).ok(),
                    Ok(Message::Close(frame)) => {
                        close = frame.map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string()));
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let Some(frame) = frame.and_then(|f| f.frame) else { continue };
                let unmatched = match frame {
                    Frame::Reply(reply) => {
                        let waiter = reader_pending.lock().await.waiters.remove(&reply.request_id);
                        match (waiter, reply.result) {
                            (Some(waiter), Some(result)) => {
                                let _ = waiter.send(Ok(result));
                                None
                            }
                            _ => None,
                        }
                    }
                    Frame::Error(error) => {
                        let waiter = reader_pending.lock().await.waiters.remove(&error.request_id);
                        match waiter {
                            Some(waiter) => {
                                let _ = waiter.send(Err(error));
                                None
                            }
                            None => Some(Incoming::Error(error)),
                        }
                    }
                    Frame::Event(event) => Some(Incoming::Event(event)),
                    Frame::Ephemeral(event) => Some(Incoming::Ephemeral(event)),
                    Frame::Notice(notice) => Some(Incoming::Notice(notice)),
                };
                if let Some(item) = unmatched {
                    let _ = deliver.send(item);
                }
            }
            {
                let mut pending = reader_pending.lock().await;
                pending.closed = true;
                pending.waiters.clear();
            }
            let _ = deliver.send(Incoming::Closed(close));
        });

        Self {
            encoding,
            outgoing,
            pending,
            incoming,
            next_request_id: AtomicU64::new(1),
            request_timeout: Duration::from_secs(10),
            tasks: [reader, writer],
        }
    }

    fn encode(&self, frame: &ClientFrame) -> Message {
        match self.encoding {
            Encoding::Protobuf => Message::Binary(frame.encode_to_vec().into()),
            Encoding::Json => Message::Text(serde_json::to_string(frame).expect("client frames serialise").into()),
        }
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, request: Req) -> Result<ReplyResult, ClientError> {
        let answer = self.start_request(request).await?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(ClientError::Server(error)),
        }
    }

    /// Sends a request without waiting; the returned receiver gets its answer.
    pub async fn start_request(
        &self,
        request: Req,
    ) -> Result<oneshot::Receiver<Result<ReplyResult, wire::Error>>, ClientError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().await;
            if pending.closed {
                return Err(ClientError::Closed);
            }
            pending.waiters.insert(request_id, tx);
        }
        let frame = ClientFrame { request_id, request: Some(request) };
        self.outgoing.send(self.encode(&frame)).await.map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }

    /// Sends any WebSocket message as is (for trying malformed input).
    pub async fn send_raw(&self, message: Message) -> Result<(), ClientError> {
        self.outgoing.send(message).await.map_err(|_| ClientError::Closed)
    }

    /// The next event, ephemeral event, notice or unmatched error.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Like `next`, failing with `Timeout` after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Incoming, ClientError> {
        match tokio::time::timeout(wait, self.incoming.recv()).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(None) => Err(ClientError::Closed),
            Ok(Some(item)) => Ok(item),
        }
    }

    /// Anything already received, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming> {
        self.incoming.try_recv().ok()
    }

    pub async fn close(&self) {
        let _ = self.outgoing.send(Message::Close(None)).await;
    }

    // Typed shortcuts for the common requests.

    /// Starts the stream after `after_pos`; returns the head position.
    pub async fn sync(&self, after_pos: u64) -> Result<u64, ClientError> {
        self.sync_in(after_pos, "").await.map(|s| s.head_pos)
    }

    /// Sync from a position stored under stream `epoch` (empty: none); the answer carries the
    /// stream's epoch to store with the positions.
    pub async fn sync_in(&self, after_pos: u64, epoch: &str) -> Result<wire::SyncStarted, ClientError> {
        match self.request(Req::Sync(wire::SyncRequest { after_pos, epoch: epoch.into() })).await? {
            ReplyResult::Sync(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ack(&self, pos: u64) -> Result<(), ClientError> {
        self.request(Req::Ack(wire::AckRequest { pos })).await.map(|_| ())
    }

    pub async fn create_direct(&self, peer_id: u64) -> Result<wire::Room, ClientError> {
        room(self.request(Req::CreateDirect(wire::CreateDirectRequest { peer_id })).await?)
    }

    pub async fn create_group(&self, name: &str, member_ids: Vec<u64>) -> Result<wire::Room, ClientError> {
        room(self.request(Req::CreateGroup(wire::CreateGroupRequest { name: name.into(), member_ids })).await?)
    }

    pub async fn send_text(&self, room_id: u64, client_msg_id: &str, text: &str) -> Result<wire::SendAck, ClientError> {
        let request = wire::SendMessageRequest {
            room_id,
            client_msg_id: client_msg_id.into(),
            text: text.into(),
            reply_to_seq: 0,
            media_ids: Vec::new(),
        };
        match self.request(Req::SendMessage(request)).await? {
            ReplyResult::Sent(ack) => Ok(ack),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_rooms(&self) -> Result<Vec<wire::Room>, ClientError> {
        match self.request(Req::ListRooms(wire::ListRoomsRequest {})).await? {
            ReplyResult::Rooms(list) => Ok(list.rooms),
            other => Err(unexpected(other)),
        }
    }

    pub async fn history(&self, request: wire::HistoryRequest) -> Result<wire::History, ClientError> {
        match self.request(Req::History(request)).await? {
            ReplyResult::History(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    pub async fn set_push_token(&self, request: wire::SetPushTokenRequest) -> Result<(), ClientError> {
        self.request(Req::SetPushToken(request)).await.map(|_| ())
    }

    pub async fn clear_push_token(&self) -> Result<(), ClientError> {
        self.request(Req::ClearPushToken(wire::ClearPushTokenRequest {})).await.map(|_| ())
    }

    pub async fn mute_room(&self, room_id: u64, until_ms: i64) -> Result<(), ClientError> {
        self.request(Req::MuteRoom(wire::MuteRoomRequest { room_id, until_ms })).await.map(|_| ())
    }

    pub async fn set_do_not_disturb(&self, until_ms: i64) -> Result<(), ClientError> {
        self.request(Req::SetDoNotDisturb(wire::SetDoNotDisturbRequest { until_ms })).await.map(|_| ())
    }
}

fn handshake_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_ref().and_then(|b| serde_json::from_slice(b).ok());
            ClientError::Http { status, body }
        }
        other => ClientError::Transport(other.to_string()),
    }
}

fn room(result: ReplyResult) -> Result<wire::Room, ClientError> {
    match result {
        ReplyResult::Room(room) => Ok(room),
        other => Err(unexpected(other)),
    }
}

fn unexpected(result: ReplyResult) -> ClientError {
    ClientError::Transport(format!("unexpected answer {result:?}"))
}
