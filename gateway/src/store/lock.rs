//! One gateway per data directory: `serve` holds an exclusive lock on `DATA_DIR/gateway.lock`
//! for as long as it runs, so a second gateway on the same journal (two writers, two brokers
//! answering for the same devices) stops at start with the holder's pid. The CLI's commands do
//! not take it: they work beside a running gateway, as SQLite's WAL allows.
//!
//! NOTE: `flock(2)`, not a pid file: the kernel releases it when the process dies, however it
//! dies (SIGKILL included), so a crashed gateway never leaves a stale lock behind.

use super::error::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const FILE: &str = "gateway.lock";

/// Held while the gateway runs; released on drop (and by the kernel on exit).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Take the data directory's lock, creating the directory and the file if needed.
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::setup(
                format!("cannot create data directory {}: {e}", dir.display()),
                e,
            )
        })?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::setup(format!("cannot open {}: {e}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; LOCK_NB makes it fail instead of waiting.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::InUse {
                    dir: dir.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(StoreError::setup(
                format!("cannot lock {}: {err}", path.display()),
                err,
            ));
        }
        let mut write_pid = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        write_pid()
            .map_err(|e| StoreError::setup(format!("cannot write {}: {e}", path.display()), e))?;
        Ok(DirLock { _file: file, path })
    }

    /// Where the lock file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DirLock::acquire(dir.path()).expect("the first gateway locks");
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as another process would.
        match DirLock::acquire(dir.path()) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second gateway must be refused, got {other:?}"),
        }
        let msg = DirLock::acquire(dir.path())
            .expect_err("still held")
            .to_string();
        assert_eq!(
            msg,
            format!(
                "data directory {} is in use by another gateway (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the first lets go");
    }
}
