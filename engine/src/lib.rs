//! rkt-engine: everything stage0 knows and no backend code.
//!
//! Data flows one way: a plain request from the cli is resolved into images
//! (`stage::ImageFinder`), rendered by the `store`, prepared into a `pod`, and run
//! by a `stage::Stage1`. Backends only ever see the types defined here.

pub mod failpoint;
pub mod fsutil;
pub mod gc;
pub mod image_gc;
pub mod mds;
pub mod mount_api;
pub mod mutable;
pub mod pod;
pub mod runner;
pub mod schema;
pub mod stage;
pub mod store;
pub mod userns;
