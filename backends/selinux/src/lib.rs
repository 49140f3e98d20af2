//! Labeler: SELinux process and mount labels for a pod's processes and files.
//!
//! Where SELinux is disabled (no selinuxfs mounted, as on Debian by default) it
//! yields no labels, so the backends apply none. Real label allocation (MCS
//! categories per pod) comes with the isolation work.

use std::path::Path;

use rkt_engine::pod::PodInfo;
use rkt_engine::stage::{Availability, BackendError, Labeler, Labels, Registration};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelinuxLabeler {}

inventory::submit! {
    Registration::<dyn Labeler> {
        name: "selinux",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<SelinuxLabeler>(config)?)),
    }
}

/// selinuxfs is mounted exactly when the kernel has SELinux enabled.
fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

impl Labeler for SelinuxLabeler {
    fn name(&self) -> &'static str {
        "selinux"
    }

    fn availability(&self) -> Availability {
        if selinux_enabled() {
            Availability::Unavailable("SELinux is enabled but pod labelling is not implemented yet".into())
        } else {
            Availability::Available
        }
    }

    fn labels(&self, _pod: &PodInfo) -> Result<Labels, BackendError> {
        if selinux_enabled() {
            tracing::warn!("SELinux is enabled; pods run with the caller's label");
        }
        Ok(Labels::default())
    }
}
