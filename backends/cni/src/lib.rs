//! Networkers. `host` shares the host's network namespace (fly's only mode, and
//! `--net=host` everywhere); CNI networks come next.

use std::path::Path;

use async_trait::async_trait;
use rkt_engine::pod::PodInfo;
use rkt_engine::stage::{BackendError, NetInfo, NetRequest, Networker, Registration};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostNetworker {}

inventory::submit! {
    Registration::<dyn Networker> {
        name: "host",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<HostNetworker>(config)?)),
    }
}

#[async_trait]
impl Networker for HostNetworker {
    fn name(&self) -> &'static str {
        "host"
    }

    fn handles(&self, request: &NetRequest) -> bool {
        request.is_host()
    }

    async fn setup(&self, _pod: &PodInfo, _request: &NetRequest) -> Result<NetInfo, BackendError> {
        Ok(NetInfo::default())
    }

    async fn teardown(&self, _pod_dir: &Path) -> Result<(), BackendError> {
        Ok(())
    }
}
