//! `rkt enter` on a VM pod: there is no namespace to join from the host, so
//! the guest's init runs the command. The request and its results travel
//! through the pod's share (see `protocol::vm_enter_dir`); this side streams
//! the command's output files while it runs and returns its exit code.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, VmEnterRequest};

use crate::{KvmError, process};

/// How often the output files are read while the command runs; the wait is on
/// QEMU's pidfd, so a VM that ends meanwhile is noticed at once.
const POLL: Duration = Duration::from_millis(50);

/// Runs `argv` in `app` of the VM pod at `pod` (QEMU is `qemu`); the command's
/// exit code.
pub fn run(pod: &Path, qemu: Pid, app: &str, argv: &[String]) -> Result<i32, KvmError> {
    let base = protocol::vm_enter_dir().on_host(pod);
    std::fs::create_dir_all(&base).map_err(|e| KvmError::io(format!("creating {}", base.display()), e))?;
    let dir = tempfile::Builder::new()
        .prefix("enter-")
        .tempdir_in(&base)
        .map_err(|e| KvmError::io(format!("creating a request in {}", base.display()), e))?;
    let request = serde_json::to_vec(&VmEnterRequest {
        app: app.to_string(),
        argv: argv.to_vec(),
    })
    .map_err(|e| KvmError::Invalid(format!("encoding the enter request: {e}")))?;
    let request_path = dir.path().join(protocol::VM_ENTER_REQUEST);
    fsutil::replace_file(&request_path, &request)
        .map_err(|e| KvmError::io(format!("writing {}", request_path.display()), e))?;

    let mut stdout = Tail::new(dir.path().join(protocol::VM_ENTER_STDOUT));
    let mut stderr = Tail::new(dir.path().join(protocol::VM_ENTER_STDERR));
    loop {
        // Read the result first, the output after: everything the command
        // wrote is in the files once its exit code is.
        let exit = std::fs::read_to_string(dir.path().join(protocol::VM_ENTER_EXIT)).ok();
        let error = std::fs::read_to_string(dir.path().join(protocol::VM_ENTER_ERROR)).ok();
        stdout.pump(&mut std::io::stdout().lock());
        stderr.pump(&mut std::io::stderr().lock());
        if let Some(message) = error {
            return Err(KvmError::Pod(message.trim().to_string()));
        }
        if let Some(code) = exit {
            return code.trim().parse().map_err(|_| {
                KvmError::Invalid(format!("enter: bad exit code {:?} from the guest", code.trim()))
            });
        }
        if process::wait_exit(qemu, POLL) {
            return Err(KvmError::Pod(
                "enter: the pod's VM ended before the command finished".into(),
            ));
        }
    }
}

/// New bytes of a file another process appends to.
struct Tail {
    path: std::path::PathBuf,
    file: Option<File>,
}

impl Tail {
    fn new(path: std::path::PathBuf) -> Self {
        Tail { path, file: None }
    }

    fn pump(&mut self, out: &mut dyn Write) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = out.write_all(&buf[..n]);
        }
        let _ = out.flush();
    }
}
