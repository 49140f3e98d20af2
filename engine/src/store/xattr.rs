//! Extended attributes an image carries (PAX `SCHILY.xattr.<name>` records), kept
//! when it is rendered and when a rendered tree is copied for `--no-overlay`.
//!
//! Only namespaces an image has business setting are applied: `user.*`, file
//! capabilities and POSIX ACLs. `trusted.*` is refused (`trusted.overlay.*` would
//! steer the overlay filesystem our pods are mounted with), and `security.selinux`
//! is the Labeler's to set, never the image's.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::StoreError;

pub(super) type Xattrs = Vec<(CString, Vec<u8>)>;

const PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

fn allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || matches!(
            name,
            b"security.capability" | b"system.posix_acl_access" | b"system.posix_acl_default"
        )
}

/// The allowed xattrs recorded for one archive entry.
pub(super) fn of_entry<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Xattrs, StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{shown}: extended attributes: {e}"));
    let Some(extensions) = entry.pax_extensions().map_err(|e| bad(&e))? else {
        return Ok(Vec::new());
    };
    let mut xattrs = Vec::new();
    for extension in extensions {
        let extension = extension.map_err(|e| bad(&e))?;
        let Some(name) = extension.key_bytes().strip_prefix(PAX_PREFIX) else {
            continue;
        };
        if !allowed(name) {
            tracing::debug!(path = shown, xattr = %String::from_utf8_lossy(name), "not applying xattr");
            continue;
        }
        let name = CString::new(name).map_err(|e| bad(&e))?;
        xattrs.push((name, extension.value_bytes().to_vec()));
    }
    Ok(xattrs)
}

/// Sets `xattrs` on `fd` (after its owner: chown clears file capabilities). A
/// filesystem without xattr support loses them with a warning rather than failing.
pub(super) fn apply(fd: BorrowedFd<'_>, xattrs: &Xattrs) -> io::Result<()> {
    for (name, value) in xattrs {
        // SAFETY: `name` is NUL-terminated and `value` is a live buffer of the given
        // length; the kernel only reads both during the call, and `fd` is open.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::warn!(xattr = ?name, "the store's filesystem does not keep extended attributes");
                continue;
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Every allowed xattr of `fd`, for copying.
pub(super) fn read(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let names = read_buffer(|buf| {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes (or null with
        // length 0 to ask for the size); `fd` is open.
        unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
    })?;
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty() && allowed(n)) {
        let name = CString::new(name).map_err(io::Error::other)?;
        let value = read_buffer(|buf| {
            // SAFETY: as above; `name` is NUL-terminated.
            unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        })?;
        xattrs.push((name, value));
    }
    Ok(xattrs)
}

/// The size-query-then-read dance of the *xattr calls, retried if the value grew.
fn read_buffer(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(err),
            };
        }
        let mut buf = vec![0u8; size.unsigned_abs()];
        let got = call(&mut buf);
        if got >= 0 {
            buf.truncate(got.unsigned_abs());
            return Ok(buf);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(io::Error::last_os_error());
        }
    }
}
