//! appc schema types (ImageManifest, PodManifest and what they contain).
//!
//! Parse = validate: every constructor from outside input checks the invariants the
//! appc spec gives, and so does every `Deserialize` (a bad value nested anywhere in a
//! manifest is caught). Errors are one line naming the field path:
//! `apps[0].mounts[1].volume: no volume named "logs" in volumes`.
//!
//! Values built in code with struct literals are not checked until `validate()`.

mod app;
mod error;
mod image;
mod image_id;
mod isolator;
mod labels;
mod names;
mod options;
mod pod;
mod quantity;
mod validate;

#[cfg(test)]
mod tests;

pub use app::{App, EnvVar, EventHandler, MountPoint, Port};
pub use error::{SchemaError, from_json, from_value};
pub use image::{Dependency, ImageManifest};
pub use image_id::ImageId;
pub use isolator::{
    DEFAULT_CAPABILITIES, Isolator, IsolatorKind, LinuxCapability, ResourceAmounts, SeccompSet,
    app_capabilities,
};
pub use labels::{Annotation, Label, VALID_OS_ARCH, host_arch_label};
pub use names::{ACIdentifier, ACName};
pub use options::{FlagOptions, MntVolume};
pub use pod::{ExposedPort, Mount, PodManifest, RuntimeApp, RuntimeImage, Volume, VolumeKind};
pub use quantity::Quantity;

/// The appc spec version this crate writes.
pub const AC_VERSION: &str = "0.8.11";
