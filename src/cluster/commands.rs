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
    /// `urls` is one URL, or the seed nodes of a Redis Cluster when `cluster` is set.
    pub async fn connect(urls: &[String], cluster: bool) -> anyhow::Result<Self> {
        if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.to_vec())
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(2))
                .retries(2)
                .build()
                .map_err(|e| anyhow::anyhow!("Redis Cluster seeds {urls:?}: {e}"))?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to the Redis Cluster at {urls:?}: {e}"))?;
            return Ok(Commands::Cluster(connection));
        }
        let url = urls.first().map(String::as_str).unwrap_or_default();
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("cluster.redis_url {url:?}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Redis at {url}: {e}"))?;
        Ok(Commands::Single(manager))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
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
