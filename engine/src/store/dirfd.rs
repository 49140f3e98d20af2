//! Small fd-relative helpers shared by pruning and copying; candidates for fsutil.

use std::ffi::CString;
use std::os::fd::BorrowedFd;

use nix::sys::stat::FileStat;

/// The entry names of an open directory, without `.` and `..`.
pub(super) fn names(dir: BorrowedFd<'_>) -> std::io::Result<Vec<CString>> {
    // Dir takes ownership of the fd it reads; give it a duplicate so the caller's fd
    // stays usable for the *at calls that follow.
    let dup = nix::unistd::dup(dir)?;
    let mut listing = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

pub(super) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
