//! fly stage1: one app, chroot in a private mount namespace, host network
