//! What the nodes of a cluster prove to each other, with HMAC-SHA256 under the node key (the key
//! itself never leaves the node).
//!
//! - A forwarded request carries the sending node's id, a timestamp, a random nonce and a MAC over
//!   them and the body. The receiver refuses one that is more than `FORWARD_WINDOW` from its
//!   clock, and any (node, nonce) it has seen within that window: a captured request cannot be
//!   replayed, nor altered.
//! - A bridge message is `<timestamp ms>.<MAC hex>.<envelope JSON>`, the MAC over the channel, the
//!   timestamp and the envelope. One forged by whoever can PUBLISH to Redis, or copied onto another
//!   user's channel, or replayed after `BRIDGE_WINDOW`, is dropped (a dropped event is read from
//!   the store like any other missing one; within the window a replayed event is a position the
//!   user's actor already has).
//!
//! Domain-separation prefixes keep a MAC of one kind from ever passing as the other.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use ring::hmac;

pub const NODE_HEADER: &str = "x-tidings-node";
pub const TIMESTAMP_HEADER: &str = "x-tidings-timestamp";
pub const NONCE_HEADER: &str = "x-tidings-nonce";
pub const SIGNATURE_HEADER: &str = "x-tidings-signature";

/// How far a forwarded request's timestamp may be from the receiver's clock.
pub const FORWARD_WINDOW_MS: i64 = 30_000;
/// How old a bridge message may be (Redis delivers in milliseconds; this allows for clock skew).
pub const BRIDGE_WINDOW_MS: i64 = 60_000;
/// Nonces remembered at most; past it the oldest go (a node forwarding more than this in a
/// window is far beyond any load we have measured).
const MAX_NONCES: usize = 1_000_000;

/// The signature headers of one forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSignature {
    pub node: String,
    pub timestamp_ms: i64,
    pub nonce: u64,
    pub mac_hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the window")]
    Stale,
    #[error("already seen")]
    Replayed,
    #[error("malformed")]
    Malformed,
}

/// The (node, nonce) pairs seen, and the order they came in, with when.
type SeenNonces = (HashSet<(String, u64)>, VecDeque<(i64, String, u64)>);

pub struct NodeSigner {
    key: hmac::Key,
    seen: Mutex<SeenNonces>,
}

impl NodeSigner {
    pub fn new(node_key: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, node_key), seen: Mutex::default() }
    }

    pub fn sign_forward(&self, node: &str, timestamp_ms: i64, nonce: u64, body: &[u8]) -> ForwardSignature {
        let tag = hmac::sign(&self.key, &forward_message(node, timestamp_ms, nonce, body));
        ForwardSignature { node: node.to_owned(), timestamp_ms, nonce, mac_hex: hex(tag.as_ref()) }
    }

    /// Checks a forwarded request at `now_ms`, and remembers its nonce.
    pub fn verify_forward(&self, signature: &ForwardSignature, body: &[u8], now_ms: i64) -> Result<(), Refused> {
        let mac = unhex(&signature.mac_hex).ok_or(Refused::Malformed)?;
        let message = forward_message(&signature.node, signature.timestamp_ms, signature.nonce, body);
        hmac::verify(&self.key, &message, &mac).map_err(|_| Refused::BadSignature)?;
        if (now_ms - signature.timestamp_ms).abs() > FORWARD_WINDOW_MS {
            return Err(Refused::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *seen;
        while let Some((at, _, _)) = order.front()
            && (*at < now_ms - 2 * FORWARD_WINDOW_MS || order.len() >= MAX_NONCES)
        {
            let (_, node, nonce) = order.pop_front().expect("just looked");
            set.remove(&(node, nonce));
        }
        if !set.insert((signature.node.clone(), signature.nonce)) {
            return Err(Refused::Replayed);
        }
        order.push_back((now_ms, signature.node.clone(), signature.nonce));
        Ok(())
    }

    /// A bridge message for `channel`: the envelope JSON, timestamped and signed. One allocation
    /// (the message itself): this runs once per recipient of every event that crosses nodes.
    pub fn seal_bridge(&self, channel: &str, timestamp_ms: i64, envelope: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::with_capacity(envelope.len() + 90);
        use std::io::Write as _;
        let _ = write!(sealed, "{timestamp_ms}");
        let timestamp_len = sealed.len();
        let mut context = hmac::Context::with_key(&self.key);
        bridge_message(&mut context, channel, &sealed[..timestamp_len], envelope);
        let tag = context.sign();
        sealed.push(b'.');
        push_hex(&mut sealed, tag.as_ref());
        sealed.push(b'.');
        sealed.extend_from_slice(envelope);
        sealed
    }

    /// The envelope JSON of a bridge message that this cluster's key sealed for `channel`.
    pub fn open_bridge<'a>(&self, channel: &str, sealed: &'a [u8], now_ms: i64) -> Result<&'a [u8], Refused> {
        let mut parts = sealed.splitn(3, |&b| b == b'.');
        let (Some(timestamp), Some(mac), Some(envelope)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refused::Malformed);
        };
        let timestamp_ms: i64 =
            std::str::from_utf8(timestamp).ok().and_then(|t| t.parse().ok()).ok_or(Refused::Malformed)?;
        let mac = std::str::from_utf8(mac).ok().and_then(unhex).ok_or(Refused::Malformed)?;
        let mut context = hmac::Context::with_key(&self.key);
        bridge_message(&mut context, channel, timestamp, envelope);
        // Recomputed and compared in constant time, as `hmac::verify` does.
        let expected = context.sign();
        if !constant_time_eq(expected.as_ref(), &mac) {
            return Err(Refused::BadSignature);
        }
        if now_ms - timestamp_ms > BRIDGE_WINDOW_MS || timestamp_ms - now_ms > BRIDGE_WINDOW_MS {
            return Err(Refused::Stale);
        }
        Ok(envelope)
    }
}

fn forward_message(node: &str, timestamp_ms: i64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + node.len() + 64);
    message.extend_from_slice(b"tidings forward v1\0");
    message.extend_from_slice(node.as_bytes());
    message.push(0);
    message.extend_from_slice(timestamp_ms.to_string().as_bytes());
    message.push(0);
    message.extend_from_slice(nonce.to_string().as_bytes());
    message.push(0);
    message.extend_from_slice(body);
    message
}

/// The MAC input of a bridge message: the timestamp as it is written in the message.
fn bridge_message(context: &mut hmac::Context, channel: &str, timestamp: &[u8], envelope: &[u8]) {
    context.update(b"tidings bridge v1\0");
    context.update(channel.as_bytes());
    context.update(b"\0");
    context.update(timestamp);
    context.update(b"\0");
    context.update(envelope);
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]);
    }
}

/// A SHA-256 MAC from its 64 hex digits.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    let mut mac = [0u8; 32];
    for (byte, pair) in mac.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a node key of at least thirty-two bytes";

    #[test]
    fn a_forwarded_request_passes_once_within_the_window_and_never_altered() {
        let signer = NodeSigner::new(KEY);
        let now = 1_000_000;
        let signature = signer.sign_forward("node-a", now, 7, b"body");
        assert_eq!(signer.verify_forward(&signature, b"body", now + 10), Ok(()));
        assert_eq!(signer.verify_forward(&signature, b"body", now + 20), Err(Refused::Replayed));
        let fresh = signer.sign_forward("node-a", now, 8, b"body");
        assert_eq!(signer.verify_forward(&fresh, b"bodY", now), Err(Refused::BadSignature));
        let mut other_node = fresh.clone();
        other_node.node = "node-b".into();
        assert_eq!(signer.verify_forward(&other_node, b"body", now), Err(Refused::BadSignature));
        assert_eq!(signer.verify_forward(&fresh, b"body", now + FORWARD_WINDOW_MS + 1), Err(Refused::Stale));
        let other_key = NodeSigner::new(b"another key, also at least 32 bytes long");
        assert_eq!(other_key.verify_forward(&fresh, b"body", now), Err(Refused::BadSignature));
        let mut garbled = fresh;
        garbled.mac_hex = "zz".into();
        assert_eq!(signer.verify_forward(&garbled, b"body", now), Err(Refused::Malformed));
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let signer = NodeSigner::new(KEY);
        for i in 0..100 {
            let s = signer.sign_forward("n", i * 1000, i as u64, b"");
            signer.verify_forward(&s, b"", i * 1000).unwrap();
        }
        let remembered = signer.seen.lock().unwrap().0.len();
        assert!(remembered <= (2 * FORWARD_WINDOW_MS / 1000 + 1) as usize, "{remembered}");
    }

    /// A measurement, not a check: `cargo test --release --lib seal_cost -- --ignored --nocapture`
    /// (figures in docs/benchmarks.md).
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn seal_cost() {
        let signer = NodeSigner::new(KEY);
        let envelope = br#"{"k":"Event","origin":"node-1","pos":123456,"event":{"pos":"123456","entry":{"roomId":"42","seq":"7","senderId":"9","text":{"text":"a message of some sixty bytes, as chats mostly are....."}}}}"#;
        let n = 1_000_000;
        let started = std::time::Instant::now();
        let mut sealed = Vec::new();
        for i in 0..n {
            sealed = signer.seal_bridge("tidings:u:12345", 1_000 + i, envelope);
        }
        let seal_ns = started.elapsed().as_nanos() as f64 / n as f64;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(signer.open_bridge("tidings:u:12345", &sealed, 1_000 + n).unwrap());
        }
        let open_ns = started.elapsed().as_nanos() as f64 / n as f64;
        eprintln!("{}-byte envelope: seal {seal_ns:.0} ns, open {open_ns:.0} ns", envelope.len());
    }

    #[test]
    fn a_bridge_message_opens_only_on_its_channel_under_its_key_and_while_fresh() {
        let signer = NodeSigner::new(KEY);
        let now = 5_000_000;
        let sealed = signer.seal_bridge("tidings:user:1", now, br#"{"k":"Kick"}"#);
        assert_eq!(signer.open_bridge("tidings:user:1", &sealed, now + 5), Ok(&br#"{"k":"Kick"}"#[..]));
        assert_eq!(signer.open_bridge("tidings:user:2", &sealed, now), Err(Refused::BadSignature));
        assert_eq!(signer.open_bridge("tidings:user:1", &sealed, now + BRIDGE_WINDOW_MS + 1), Err(Refused::Stale));
        assert_eq!(NodeSigner::new(&[7; 32]).open_bridge("tidings:user:1", &sealed, now), Err(Refused::BadSignature));
        // What an attacker with PUBLISH rights sends: an envelope with no seal, or a made-up one.
        assert_eq!(signer.open_bridge("tidings:user:1", br#"{"k":"Kick"}"#, now), Err(Refused::Malformed));
        let forged = format!("{now}.{}.{{\"k\":\"Kick\"}}", "0".repeat(64));
        assert_eq!(signer.open_bridge("tidings:user:1", forged.as_bytes(), now), Err(Refused::BadSignature));
    }
}
