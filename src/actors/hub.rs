use std::sync::Arc;

use super::Registry;
use crate::config::LimitsConfig;
use crate::push::PushGate;
use crate::store::Store;

/// What every actor and connection of a node shares.
pub struct Hub {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub limits: LimitsConfig,
    pub push: Arc<PushGate>,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, limits: LimitsConfig, push: Arc<PushGate>) -> Arc<Self> {
        Arc::new(Self { store, registry: Registry::default(), limits, push })
    }
}
