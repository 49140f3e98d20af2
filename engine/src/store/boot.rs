//! This boot's identity. Data the store publishes without syncing it (a tree
//! extracted while importing, the archive of an image imported for a run) is
//! stamped with it: in the boot that wrote it, the page cache holds it whatever the
//! disk has; after a crash (any later boot) it may be lost and is checked or
//! rebuilt before use.

/// This boot's ID (`/proc/sys/kernel/random/boot_id`); None when /proc does not
/// tell, and then everything is synced before it is published.
pub(super) fn current() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = text.trim();
    (!boot.is_empty()).then(|| boot.to_string())
}
