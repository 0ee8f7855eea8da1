//! Binary upgrade without a refused connection, on Pingora's listener
//! hand-over: `obleth run --upgrade` finds the serving process through
//! `server.pid_file`, listens on `server.upgrade_socket`, and sends it
//! SIGQUIT; the old process passes its listening sockets over that socket,
//! keeps serving for Pingora's 5 s overlap (every response then closes its
//! connection, so clients reconnect to whichever process accepts), then
//! stops accepting, drains its requests and exits. The kernel queues
//! connections on the shared sockets meanwhile, so none is refused.
//!
//! The admin and metrics ports are not Pingora listeners: the old process
//! closes them when the hand-over starts and the new one binds them as
//! they come free. The usage log has one writer at a time, so with the LLM
//! plane the new process opens it when the old one has drained.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why `obleth run --upgrade` cannot take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "--upgrade: no running obleth is recorded in {path} ({source}); start it without --upgrade"
    )]
    NoPidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--upgrade: {path} does not hold a process id")]
    BadPidFile { path: PathBuf },
    #[error("--upgrade: process {pid} (from {path}) is not running; start without --upgrade")]
    NotRunning { pid: i32, path: PathBuf },
}

/// Records this process as the one serving, once its listeners accept:
/// written beside and renamed over, so a reader never sees half a pid.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{}\n", std::process::id()))?;
    std::fs::rename(&partial, path)
}

/// Checks that the process in `pid_file` runs, then asks it to hand its
/// sockets over as soon as this process listens on `socket` (Pingora's
/// bootstrap, next, creates it and waits for them).
pub fn ask_for_sockets(pid_file: &Path, socket: &Path) -> Result<(), UpgradeError> {
    let text = std::fs::read_to_string(pid_file).map_err(|source| UpgradeError::NoPidFile {
        path: pid_file.to_path_buf(),
        source,
    })?;
    let pid: i32 =
        text.trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| UpgradeError::BadPidFile {
                path: pid_file.to_path_buf(),
            })?;
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks the pid.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return Err(UpgradeError::NotRunning {
            pid,
            path: pid_file.to_path_buf(),
        });
    }
    // A socket file left by an earlier upgrade would be mistaken for ours.
    let _ = std::fs::remove_file(socket);
    let socket = socket.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::info!(pid, "asking the running obleth for its listening sockets");
            // SAFETY: kill(2) has no memory effects; a failure is reported.
            if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
                tracing::error!(
                    pid,
                    "cannot signal the running obleth: {}",
                    std::io::Error::last_os_error()
                );
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the upgrade signaller: {e}");
    }
    Ok(())
}
