//! Local ACI files: `./x.aci`, `/abs/x.aci`, `file:///abs/x.aci`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{BackendError, FetchPolicy, ImageFinder, ImageRef, Registration};
use rkt_engine::store::Store;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileFinder {}

inventory::submit! {
    Registration::<dyn ImageFinder> {
        name: "file",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<FileFinder>(config)?)),
    }
}

/// The detached signature rkt looks for beside an image.
fn signature_path(image: &Path) -> PathBuf {
    let mut sig = image.as_os_str().to_owned();
    sig.push(".asc");
    PathBuf::from(sig)
}

#[async_trait]
impl ImageFinder for FileFinder {
    fn name(&self) -> &'static str {
        "file"
    }

    fn handles(&self, reference: &ImageRef) -> bool {
        matches!(reference, ImageRef::Path(_))
    }

    fn needs_runtime(&self) -> bool {
        false
    }

    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError> {
        let ImageRef::Path(path) = reference else {
            return Err(BackendError::Other(format!("{reference} is not a local file")));
        };
        if !path.exists() {
            return Err(BackendError::Other(format!(
                "image file {} does not exist",
                path.display()
            )));
        }
        if !policy.insecure.image {
            // Verifying signatures needs the keystore (`rkt trust`), which is not
            // built yet: refuse rather than run an unverified image silently.
            let sig = policy.signature.clone().unwrap_or_else(|| signature_path(path));
            let why = if sig.exists() {
                format!("signature verification ({}) is not supported yet", sig.display())
            } else {
                format!("no signature found at {}", sig.display())
            };
            return Err(BackendError::Other(format!(
                "image {} cannot be verified: {why}; pass --insecure-options=image to use it unverified",
                path.display()
            )));
        }
        store
            .import_file(path)
            .map_err(|e| BackendError::Other(format!("{}: {e}", path.display())))
    }
}
