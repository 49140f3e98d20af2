//! `http://` and `https://` image URLs.

use async_trait::async_trait;
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{BackendError, FetchPolicy, ImageFinder, ImageRef, Registration};
use rkt_engine::store::Store;

use crate::aci::{self, AciLocation};
use crate::transport::Transport;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpFinder {}

inventory::submit! {
    Registration::<dyn ImageFinder> {
        name: "http",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<HttpFinder>(config)?)),
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

#[async_trait]
impl ImageFinder for HttpFinder {
    fn name(&self) -> &'static str {
        "http"
    }

    fn handles(&self, reference: &ImageRef) -> bool {
        matches!(reference, ImageRef::Url(url) if is_http(url))
    }

    /// Downloads with blocking I/O on the calling thread (see `transport`).
    fn needs_runtime(&self) -> bool {
        false
    }

    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError> {
        let ImageRef::Url(url) = reference else {
            return Err(BackendError::Other(format!("{reference} is not a URL")));
        };
        let previous = store
            .remote(url)
            .map_err(|e| BackendError::Other(format!("{url}: {e}")))?;
        if let Some(record) = aci::cached(store, url, url, policy)? {
            tracing::debug!(url, id = %record.id, "using the stored image");
            return Ok(record.id);
        }
        let transport = Transport::new(&policy.insecure);
        aci::fetch(
            store,
            &transport,
            url,
            &AciLocation::beside(url),
            previous,
            policy,
        )
    }
}
