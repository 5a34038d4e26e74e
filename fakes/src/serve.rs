//! Accepting connections and answering them with a handler, until the fake is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type Reply = Response<Full<Bytes>>;

/// A request with its body read.
pub struct Received {
    pub method: hyper::Method,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub enum Protocol {
    /// HTTP/2 only, cleartext (prior knowledge), with this many concurrent streams per connection.
    Http2 { max_concurrent_streams: u32 },
    /// HTTP/1.1 or cleartext HTTP/2, whichever the client speaks.
    Auto,
}

/// Binds 127.0.0.1:0 and serves every connection with `handle` on a background task.
pub async fn serve<H, F>(protocol: Protocol, handle: H) -> (SocketAddr, JoinHandle<()>)
where
    H: Fn(Received) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a fake provider");
    let addr = listener.local_addr().expect("local addr");
    let handle = Arc::new(handle);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let received = Received {
                        method: parts.method,
                        path: parts.uri.path().to_owned(),
                        headers: parts.headers,
                        body,
                    };
                    Ok::<_, Infallible>(handle(received).await)
                }
            });
            let io = TokioIo::new(stream);
            match protocol {
                Protocol::Http2 { max_concurrent_streams } => {
                    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder.max_concurrent_streams(max_concurrent_streams);
                    tokio::spawn(async move {
                        let _ = builder.serve_connection(io, service).await;
                    });
                }
                Protocol::Auto => {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::spawn(async move {
                        let _ = builder.serve_connection(io, service).await;
                    });
                }
            }
        }
    });
    (addr, task)
}

pub fn reply(status: u16, headers: &[(&str, String)], body: serde_json::Value) -> Reply {
    let mut response = Response::builder().status(status).header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
    response.body(Full::new(body)).expect("a valid response")
}

pub fn header(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Waits until `done` holds or `timeout` passes, re-checking whenever `changed` is notified.
pub async fn wait_until(changed: &tokio::sync::Notify, timeout: std::time::Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = changed.notified();
        if done() || tokio::time::Instant::now() >= deadline {
            return;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}
