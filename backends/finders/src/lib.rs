//! ImageFinders: where images come from. Each source registers itself by name;
//! the engine tries them in name order and takes the first that handles a reference.
//!
//! Only local files ship so far; http(s), discovery, docker:// and OCI follow.

mod file;

pub use file::FileFinder;
