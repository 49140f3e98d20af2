//! Local ACI files: `./x.aci`, `/abs/x.aci`, `file:///abs/x.aci`.

use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rkt_engine::schema::ImageId;
use rkt_engine::stage::{BackendError, FetchPolicy, ImageFinder, ImageRef, Registration};
use rkt_engine::store::{Store, read_manifest};

use crate::keystore::Keystore;

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
            verify(path, policy)?;
        }
        store
            .import_file(path)
            .map_err(|e| BackendError::Other(format!("{}: {e}", path.display())))
    }
}

/// Checks the image against `--signature`, or the `.asc` file beside it, with the keys
/// trusted for the name in its manifest.
fn verify(path: &Path, policy: &FetchPolicy) -> Result<(), BackendError> {
    let shown = path.display();
    let sig_path = policy.signature.clone().unwrap_or_else(|| signature_path(path));
    let signature = match std::fs::read(&sig_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackendError::Other(format!(
                "image {shown} cannot be verified: no signature found at {}; pass --signature=FILE, \
                 or --insecure-options=image to use it unverified",
                sig_path.display()
            )));
        }
        Err(e) => return Err(BackendError::io(format!("read {}", sig_path.display()), e)),
    };
    let mut file = std::fs::File::open(path).map_err(|e| BackendError::io(format!("open {shown}"), e))?;
    let manifest = read_manifest(&mut BufReader::new(&mut file))
        .map_err(|e| BackendError::Other(format!("{shown}: {e}")))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BackendError::io(format!("read {shown}"), e))?;
    let name = manifest.name.as_str();
    let fingerprint = Keystore::new(&policy.config)
        .verify(name, BufReader::with_capacity(256 << 10, file), &signature)
        .map_err(|e| BackendError::Other(format!("image {shown} ({name}) cannot be verified: {e}")))?;
    tracing::debug!(image = %shown, name, fingerprint, "signature verified");
    Ok(())
}
