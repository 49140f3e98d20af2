//! ImageFinders: where images come from. Each source registers itself by name;
//! the engine tries them in name order and takes the first that handles a reference.
//!
//! Local files (`file`), http(s) URLs (`http`), appc names (`discovery`),
//! `docker://` registries (`docker`) and OCI layouts (`oci`); signatures are checked against
//! the keys `rkt trust` keeps (`keystore`).

mod aci;
pub mod discovery;
mod docker;
mod file;
mod http;
pub mod keystore;
pub mod oci;
mod progress;
pub mod transport;

pub use discovery::DiscoveryFinder;
pub use docker::DockerFinder;
pub use file::FileFinder;
pub use http::HttpFinder;
pub use oci::OciFinder;
