//! Labeler: SELinux labels, a no-op where SELinux is disabled
