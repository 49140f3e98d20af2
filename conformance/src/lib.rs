//! Conformance checks for stage1 backends.
