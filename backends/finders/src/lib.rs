//! ImageFinders: where images come from. Each source registers itself by name;
//! the engine tries them in name order and takes the first that handles a reference.
//!
//! Local files (`file`), http(s) URLs (`http`) and appc names (`discovery`); signatures are checked against
//! the keys `rkt trust` keeps (`keystore`).

mod aci;
mod discovery;
mod file;
mod http;
pub mod keystore;
mod progress;
pub mod transport;

pub use discovery::DiscoveryFinder;
pub use file::FileFinder;
pub use http::HttpFinder;
