//! The conformance kit: checks any stage1 backend through the real `rkt` binary.
//!
//! A backend author runs `cargo run -p rkt-conformance -- --stage1=NAME`; CI runs the
//! same checks from `cli/tests/conformance.rs` for every registered backend. Each
//! check reports Passed, Skipped (with the reason: a prerequisite is missing) or
//! Failed (with what was seen), in the style of youki's contest framework.

pub mod ace;
pub mod backends;
pub mod checks;
pub mod cri_images;
pub mod cri_runtime;
pub mod harness;
pub mod image;
pub mod pod_checks;
pub mod registry;
pub mod service;

pub use checks::{Check, Outcome, all_checks};
pub use harness::Rkt;
pub use image::{AciSpec, RawEntry, busybox_path, raw_entries_of, raw_tar};
