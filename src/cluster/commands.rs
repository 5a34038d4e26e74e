//! The command connection to Redis: one self-reconnecting connection to a single Redis, or a
//! cluster connection that routes each command to the node that owns its key's slot. Both speak
//! `redis::aio::ConnectionLike`, so the rest of the cluster code does not care which.
//!
//! The cluster connection is built without a push sender: redis-rs then keeps no subscription
//! tracker of its own (its automatic resubscription sends the sharded channels of different slots
//! in one command, which Redis refuses with CROSSSLOT). Subscriptions live in `sharded.rs`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Commands {
    /// `urls` is one URL, or the seed nodes of a Redis Cluster when `cluster` is set; `ca` the
    /// PEM CA certificate a `rediss://` server must chain to (None: the public roots).
    pub async fn connect(urls: &[String], cluster: bool, ca: Option<&[u8]>) -> anyhow::Result<Self> {
        if cluster {
            let mut builder = redis::cluster::ClusterClient::builder(urls.to_vec())
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(2))
                .retries(2);
            if let Some(ca) = ca {
                builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca.to_vec()) });
            }
            let client =
                builder.build().map_err(|e| anyhow::anyhow!("Redis Cluster seeds {:?}: {e}", redacted_all(urls)))?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to the Redis Cluster at {:?}: {e}", redacted_all(urls)))?;
            return Ok(Commands::Cluster(connection));
        }
        let url = urls.first().map(String::as_str).unwrap_or_default();
        let client = client(url, ca)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Redis at {}: {e}", redacted(url)))?;
        Ok(Commands::Single(manager))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
}

/// A client for one Redis; over TLS for `rediss://`, trusting `ca` when given.
pub fn client(url: &str, ca: Option<&[u8]>) -> anyhow::Result<redis::Client> {
    let bad = |e: redis::RedisError| anyhow::anyhow!("cluster.redis_url {:?}: {e}", redacted(url));
    match ca {
        Some(ca) if url.starts_with("rediss://") => {
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.to_vec()) };
            redis::Client::build_with_tls(url, certificates).map_err(bad)
        }
        _ => redis::Client::open(url).map_err(bad),
    }
}

/// A Redis URL without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn redacted_all(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| redacted(u)).collect()
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redacted("redis://:s3cret@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(redacted("rediss://app:p@ss@host:6380"), "rediss://app:***@host:6380");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
