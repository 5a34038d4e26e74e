//! A WebSocket on actix-http's frame codec: what the connection task reads (`Inbox`) and one
//! buffer it writes frames into (`Outbox`), which actix-http takes whole as the response body.
//!
//! Why not actix-ws: it hands each outgoing frame through a channel of 32 messages (an allocation
//! and a wake-up per frame, and for a client that stops reading up to 32 frames of any size, plus
//! 32 more being encoded, held per connection). Here a frame is encoded straight into the buffer
//! actix-http will write, a burst leaves as one chunk, and what waits for a slow client is bounded
//! in bytes: at most `outbox_bytes` here (plus the frame that crossed it) and actix-http's write
//! buffer below.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::Decoder;
use actix_http::body::{BodySize, MessageBody};
pub use actix_http::ws::{CloseCode, CloseReason, ProtocolError};
use actix_http::ws::{Codec, Frame, Item, OpCode, Parser};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// Accepts the upgrade: the 101 response to return, and the connection's two halves.
pub fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    max_message_bytes: usize,
    outbox_bytes: usize,
) -> Result<(HttpResponse, Outbox, Inbox), actix_web::Error> {
    let mut response = actix_http::ws::handshake(req.head())?;
    let (outbox, body) = outbox_and_body(outbox_bytes);
    let response = response.message_body(body.boxed())?;
    let inbox = Inbox {
        payload: payload.into_inner(),
        buf: BytesMut::new(),
        codec: Codec::new().max_size(max_message_bytes),
        max_message_bytes,
        continued: None,
        ended: false,
        shared: outbox.0.clone(),
    };
    Ok((response.into(), outbox, inbox))
}

/// An outbox and the response body that drains it.
fn outbox_and_body(limit: usize) -> (Outbox, OutboxBody) {
    let shared = Rc::new(RefCell::new(Shared { limit: limit.max(1), ..Shared::default() }));
    (Outbox(shared.clone()), OutboxBody(shared))
}

/// What the two halves and the response body share (all on the connection's worker thread).
#[derive(Default)]
struct Shared {
    /// Frames encoded and not yet taken by actix-http.
    buf: BytesMut,
    /// A write waits while `buf` holds this many bytes.
    limit: usize,
    /// A close frame was written (or the outbox dropped): the body ends once `buf` is taken.
    closing: bool,
    /// actix-http dropped the body: the connection is over.
    gone: bool,
    body_waker: Option<Waker>,
    writer_waker: Option<Waker>,
    reader_waker: Option<Waker>,
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The connection is gone: nothing written now reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// The writing half.
pub struct Outbox(Rc<RefCell<Shared>>);

impl Outbox {
    /// Whether a write can go now without waiting: `Some(Ok)` if there is room, `Some(Err)` if the
    /// connection is gone, `None` if the buffer is full.
    pub fn has_room(&self) -> Option<Result<(), Gone>> {
        let shared = self.0.borrow();
        if shared.gone {
            Some(Err(Gone))
        } else if shared.buf.len() < shared.limit {
            Some(Ok(()))
        } else {
            None
        }
    }

    /// Waits until the buffer is below its limit (the client has been taking what it was sent).
    pub async fn room(&self) -> Result<(), Gone> {
        std::future::poll_fn(|cx| match self.has_room() {
            Some(now) => Poll::Ready(now),
            None => {
                park(&mut self.0.borrow_mut().writer_waker, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Appends whole frames (see `put_header`) and wakes actix-http to take them. Call it after
    /// `room`: it does not wait.
    pub fn write(&self, frames: impl FnOnce(&mut BytesMut)) {
        let mut shared = self.0.borrow_mut();
        if shared.gone || shared.closing {
            return;
        }
        frames(&mut shared.buf);
        wake(&mut shared.body_waker);
    }

    pub fn ping(&self, payload: &[u8]) {
        self.write(|dst| Parser::write_message(dst, payload, OpCode::Ping, true, false));
    }

    pub fn pong(&self, payload: &[u8]) {
        // A control frame carries at most 125 bytes (RFC 6455 5.5); a longer ping is answered cut.
        let payload = &payload[..payload.len().min(125)];
        self.write(|dst| Parser::write_message(dst, payload, OpCode::Pong, true, false));
    }

    /// Writes the close frame; the response, and with it the connection, ends once it is taken.
    pub fn close(&self, reason: Option<CloseReason>) {
        let reason = reason.map(|mut reason| {
            // The close payload is a control frame's too: a 2-byte code and at most 123 bytes.
            if let Some(description) = &mut reason.description {
                let mut end = description.len().min(123);
                while !description.is_char_boundary(end) {
                    end -= 1;
                }
                description.truncate(end);
            }
            reason
        });
        // `write` wakes the body; it ends once it has taken the close frame.
        self.write(|dst| Parser::write_close(dst, reason, false));
        self.0.borrow_mut().closing = true;
    }
}

impl Drop for Outbox {
    /// Ends the response after what was written (as a dropped actix-ws session did).
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.closing = true;
        wake(&mut shared.body_waker);
    }
}

/// The frame header of one whole (FIN) unmasked server message of `len` bytes, as RFC 6455 5.2
/// lays it out; the caller writes the `len` payload bytes right behind it.
pub fn put_header(dst: &mut BytesMut, opcode: OpCode, len: usize) {
    let first = 0x80 | u8::from(opcode);
    if len < 126 {
        dst.reserve(2 + len);
        dst.extend_from_slice(&[first, len as u8]);
    } else if len <= usize::from(u16::MAX) {
        dst.reserve(4 + len);
        dst.extend_from_slice(&[first, 126]);
        dst.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        dst.reserve(10 + len);
        dst.extend_from_slice(&[first, 127]);
        dst.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The response body: hands actix-http everything written since it last asked, in one chunk.
struct OutboxBody(Rc<RefCell<Shared>>);

impl MessageBody for OutboxBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let mut shared = self.0.borrow_mut();
        if !shared.buf.is_empty() {
            // Taken, not split: an idle connection keeps no buffer.
            let chunk = std::mem::take(&mut shared.buf).freeze();
            wake(&mut shared.writer_waker);
            return Poll::Ready(Some(Ok(chunk)));
        }
        if shared.closing {
            return Poll::Ready(None);
        }
        park(&mut shared.body_waker, cx);
        Poll::Pending
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.gone = true;
        shared.buf = BytesMut::new();
        wake(&mut shared.writer_waker);
        wake(&mut shared.reader_waker);
    }
}

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Binary(Bytes),
    /// Checked to be UTF-8.
    Text(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// The reading half: whole messages, continuation frames joined up to the message size limit.
pub struct Inbox {
    payload: actix_http::Payload,
    buf: BytesMut,
    codec: Codec,
    max_message_bytes: usize,
    /// A message arriving in continuation frames: whether it is text, and its bytes so far.
    continued: Option<(bool, BytesMut)>,
    ended: bool,
    shared: Rc<RefCell<Shared>>,
}

impl Inbox {
    /// The next message; `None` once the client closed the connection or it is gone.
    pub async fn recv(&mut self) -> Option<Result<ClientMessage, ProtocolError>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ClientMessage, ProtocolError>>> {
        loop {
            match self.next_buffered() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.ended || self.shared.borrow().gone {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(bytes);
                    } else {
                        self.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(e)))));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => {
                    // Woken by the client's bytes, or by the body's end if the connection goes.
                    park(&mut self.shared.borrow_mut().reader_waker, cx);
                    return Poll::Pending;
                }
            }
        }
    }

    /// Decodes frames from what was read until one completes a message.
    fn next_buffered(&mut self) -> Result<Option<ClientMessage>, ProtocolError> {
        while let Some(frame) = self.codec.decode(&mut self.buf)? {
            let message = match frame {
                Frame::Binary(bytes) => ClientMessage::Binary(bytes),
                Frame::Text(bytes) => ClientMessage::Text(utf8(bytes)?),
                Frame::Ping(bytes) => ClientMessage::Ping(bytes),
                Frame::Pong(_) => ClientMessage::Pong,
                Frame::Close(_) => ClientMessage::Close,
                Frame::Continuation(item) => match self.continue_message(item)? {
                    Some(message) => message,
                    None => continue,
                },
            };
            return Ok(Some(message));
        }
        Ok(None)
    }

    fn continue_message(&mut self, item: Item) -> Result<Option<ClientMessage>, ProtocolError> {
        let (first, bytes, last) = match item {
            Item::FirstText(bytes) => (Some(true), bytes, false),
            Item::FirstBinary(bytes) => (Some(false), bytes, false),
            Item::Continue(bytes) => (None, bytes, false),
            Item::Last(bytes) => (None, bytes, true),
        };
        match (first, &mut self.continued) {
            (Some(text), None) => self.continued = Some((text, BytesMut::new())),
            (None, Some(_)) => {}
            // A first frame inside a message, or a continuation outside one.
            _ => return Err(ProtocolError::ContinuationNotStarted),
        }
        let Some((text, joined)) = &mut self.continued else { unreachable!("set above") };
        if joined.len() + bytes.len() > self.max_message_bytes {
            return Err(ProtocolError::Overflow);
        }
        joined.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        let (text, joined) = (*text, std::mem::take(joined).freeze());
        self.continued = None;
        Ok(Some(if text { ClientMessage::Text(utf8(joined)?) } else { ClientMessage::Binary(joined) }))
    }
}

fn utf8(bytes: Bytes) -> Result<Bytes, ProtocolError> {
    match std::str::from_utf8(&bytes) {
        Ok(_) => Ok(bytes),
        Err(e) => Err(ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_body(body: &mut OutboxBody) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body).poll_next(&mut cx).map(|chunk| chunk.map(|c| c.unwrap_or_else(|e| match e {})))
    }

    fn poll_room(room: &mut Pin<Box<impl Future<Output = Result<(), Gone>>>>) -> Poll<Result<(), Gone>> {
        room.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_full_outbox_waits_until_the_socket_takes_it_whole_and_a_close_ends_the_body() {
        let (outbox, mut body) = outbox_and_body(8);
        assert!(poll_body(&mut body).is_pending(), "nothing written yet");
        outbox.write(|dst| dst.extend_from_slice(b"0123"));
        outbox.write(|dst| dst.extend_from_slice(b"456789"));
        assert_eq!(outbox.has_room(), None, "10 bytes against a limit of 8");
        let mut room = Box::pin(outbox.room());
        assert!(poll_room(&mut room).is_pending());
        assert_eq!(poll_body(&mut body), Poll::Ready(Some(Bytes::from_static(b"0123456789"))), "one chunk");
        assert_eq!(poll_room(&mut room), Poll::Ready(Ok(())));
        drop(room);
        outbox.close(Some(CloseReason { code: CloseCode::Policy, description: Some("é".repeat(100)) }));
        outbox.write(|dst| dst.extend_from_slice(b"after the close"));
        let Poll::Ready(Some(close)) = poll_body(&mut body) else { panic!("the close frame") };
        // 0x88: FIN and close; a control frame's payload is at most 125 bytes (2 of code, 122 of
        // text: the description is cut on a character boundary).
        assert_eq!((close[0], close[1] as usize, close.len()), (0x88, 124, 126));
        assert_eq!(&close[2..4], &1008u16.to_be_bytes());
        assert_eq!(poll_body(&mut body), Poll::Ready(None), "nothing after the close");
    }

    #[test]
    fn a_dropped_body_is_a_gone_connection_and_a_dropped_outbox_ends_the_body() {
        let (outbox, body) = outbox_and_body(8);
        drop(body);
        assert_eq!(outbox.has_room(), Some(Err(Gone)));
        let mut room = Box::pin(outbox.room());
        assert_eq!(poll_room(&mut room), Poll::Ready(Err(Gone)));

        let (outbox, mut body) = outbox_and_body(8);
        outbox.write(|dst| dst.extend_from_slice(b"last"));
        drop(outbox);
        assert_eq!(poll_body(&mut body), Poll::Ready(Some(Bytes::from_static(b"last"))));
        assert_eq!(poll_body(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_header_frames_each_length_as_the_codec_reads_it() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![7u8; len];
            let mut ours = BytesMut::new();
            put_header(&mut ours, OpCode::Binary, len);
            ours.extend_from_slice(&payload);
            let mut theirs = BytesMut::new();
            Parser::write_message(&mut theirs, &payload, OpCode::Binary, true, false);
            assert_eq!(ours, theirs, "len {len}");
        }
    }
}
