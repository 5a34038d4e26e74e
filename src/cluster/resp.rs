//! A minimal subscriber connection for sharded pub/sub (SSUBSCRIBE), speaking RESP2 over one TCP
//! connection to one Redis Cluster master. redis-rs offers sharded subscriptions only through its
//! cluster connection, whose automatic resubscription is what must be avoided (see `commands.rs`);
//! a subscriber needs only to send commands and read arrays, so it is done here, one channel per
//! command.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The key slot (0..16384) of a key or channel, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key, or of its `{hash tag}` when it has a non-empty one.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// What a subscriber connection reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Bulk(Option<Vec<u8>>),
    Integer(i64),
    Simple(String),
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            Reply::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// `(kind, channel, payload)` of a pub/sub array such as `smessage`, `ssubscribe`, `sunsubscribe`.
    pub fn pubsub(&self) -> Option<(&[u8], &[u8], Option<&Reply>)> {
        let Reply::Array(items) = self else { return None };
        Some((items.first()?.bytes()?, items.get(1)?.bytes()?, items.get(2)))
    }
}

pub fn split(stream: TcpStream) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
    let (read, write) = stream.into_split();
    (BufReader::new(read), write)
}

pub async fn send(writer: &mut OwnedWriteHalf, args: &[&[u8]]) -> io::Result<()> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    writer.write_all(&out).await
}

/// Redis credentials (`AUTH [username] password`), as a `redis://user:password@host` URL gives them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug log.
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Authenticates a fresh connection, when there are credentials.
pub async fn authenticate(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    credentials: &Credentials,
) -> io::Result<()> {
    let Some(password) = &credentials.password else { return Ok(()) };
    match &credentials.username {
        Some(user) => send(writer, &[b"AUTH", user.as_bytes(), password.as_bytes()]).await?,
        None => send(writer, &[b"AUTH", password.as_bytes()]).await?,
    }
    match read(reader).await? {
        Reply::Simple(_) => Ok(()),
        Reply::Error(e) => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("Redis AUTH: {e}"))),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("Redis AUTH: unexpected {other:?}"))),
    }
}

/// Reads one reply. Bounded: a bulk string over 64 MiB or an array over a million items is refused.
pub async fn read(reader: &mut BufReader<OwnedReadHalf>) -> io::Result<Reply> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed RESP");
    let body = line.strip_suffix(b"\r\n").ok_or_else(bad)?;
    let (&kind, rest) = body.split_first().ok_or_else(bad)?;
    let text = std::str::from_utf8(rest).map_err(|_| bad())?;
    match kind {
        b'+' => Ok(Reply::Simple(text.to_owned())),
        b'-' => Ok(Reply::Error(text.to_owned())),
        b':' => Ok(Reply::Integer(text.parse().map_err(|_| bad())?)),
        b'$' => {
            let len: i64 = text.parse().map_err(|_| bad())?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            if len > 64 << 20 {
                return Err(bad());
            }
            let mut data = vec![0; len as usize + 2];
            reader.read_exact(&mut data).await?;
            data.truncate(len as usize);
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let n: i64 = text.parse().map_err(|_| bad())?;
            if n > 1_000_000 {
                return Err(bad());
            }
            let mut items = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n.max(0) {
                items.push(Box::pin(read(reader)).await?);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}bar"), crc16(b"{}bar") % 16384, "an empty tag hashes the whole key");
    }
}
