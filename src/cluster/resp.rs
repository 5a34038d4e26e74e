//! A minimal subscriber connection for sharded pub/sub (SSUBSCRIBE), speaking RESP2 over one TCP
//! connection to one Redis Cluster master. redis-rs offers sharded subscriptions only through its
//! cluster connection, whose automatic resubscription is what must be avoided (see `commands.rs`);
//! a subscriber needs only to send commands and read arrays, so it is done here, one channel per
//! command. Over TCP, or TLS for `rediss://` (rustls, ring).

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The reading half of a subscriber connection, plain or TLS.
pub type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// The writing half.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How to reach the masters: in the clear, or over TLS with these roots.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

impl Transport {
    /// TLS trusting `ca` (PEM) when given, else the public (webpki) roots.
    pub fn tls(ca: Option<&[u8]>) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    roots.add(cert.map_err(|e| anyhow::anyhow!("cluster.redis_ca_file: {e}"))?)?;
                }
                anyhow::ensure!(!roots.is_empty(), "cluster.redis_ca_file holds no certificate");
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        Ok(Transport::Tls(Arc::new(config)))
    }
}

/// Opens a subscriber connection to `addr` (host:port).
pub async fn connect(addr: &str, transport: &Transport) -> io::Result<(Reader, Writer)> {
    let stream = TcpStream::connect(addr).await?;
    match transport {
        Transport::Plain => {
            let (read, write) = stream.into_split();
            Ok((BufReader::new(Box::new(read)), Box::new(write)))
        }
        Transport::Tls(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_matches(['[', ']']);
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?;
            let (read, write) = tokio::io::split(tls);
            Ok((BufReader::new(Box::new(read)), Box::new(write)))
        }
    }
}

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

pub async fn send(writer: &mut Writer, args: &[&[u8]]) -> io::Result<()> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    writer.write_all(&out).await?;
    writer.flush().await
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
pub async fn authenticate(reader: &mut Reader, writer: &mut Writer, credentials: &Credentials) -> io::Result<()> {
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
pub async fn read(reader: &mut Reader) -> io::Result<Reply> {
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
