//! Crash-safe file primitives shared by training, evaluation and reports: atomic writes
//! (temporary file, fsync, one rename, fsync of the folder), removal of leftover temporary files,
//! an exclusive lock per output folder or state file, and the test-only delay hook that lets the
//! kill tests hit the window between two writes.
//!
//! Guarantee: a reader (or a process started after a `kill -9`) sees a file written by
//! [`write_atomic`] either whole in its old version or whole in its new version.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Suffix of every temporary file this crate writes before renaming it into place.
pub const TMP_SUFFIX: &str = ".tmp";

/// `path` + `.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// fsync a folder so that renames and new entries in it survive a crash (best effort: some
/// file systems refuse to open folders for syncing).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Rename the finished temporary `tmp` over `dst` after syncing it, then sync the folder.
pub fn commit_tmp(tmp: &Path, dst: &Path) -> Result<()> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    std::fs::rename(tmp, dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    sync_dir(&parent_of(dst));
    Ok(())
}

/// Write `bytes` to `path` atomically (`path.tmp`, fsync, rename, fsync of the folder). On
/// failure (e.g. a full disk) the temporary file is removed and `path` keeps its old contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("cannot write {}", tmp.display()));
    if let Err(e) = written.and_then(|_| commit_tmp(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Remove leftover `*.tmp` files of interrupted writes directly inside `dir` (not recursive);
/// returns the names removed.
pub fn remove_leftover_tmp(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && name.ends_with(TMP_SUFFIX) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// Test-only hook: when `ADVTRAIN_TEST_WRITE_DELAY_MS` is set, sleep that long. Called between
/// the files of a checkpoint set so that a test can kill a process inside that window at will.
pub fn test_delay() {
    if let Some(ms) = std::env::var("ADVTRAIN_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// An exclusive advisory lock (flock) on a lock file, held until dropped. The file holds the
/// holder's pid, host, start time and command line, so a second writer's error names the holder.
/// The kernel releases the lock when the holder dies, so a lock file left with contents by a
/// killed process is stale: it is taken over with a message.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

/// Who holds (or held) a lock: the lock file's contents.
fn holder_description(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    let s = |k: &str| v[k].as_str().map(str::to_string);
    match (v["pid"].as_u64(), s("host")) {
        (Some(pid), Some(host)) => format!(
            "pid {pid} on host {host}, since {}: {}",
            s("since").unwrap_or_else(|| "?".into()),
            s("command").unwrap_or_else(|| "?".into())
        ),
        _ => "an unknown process".into(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl DirLock {
    /// Take the lock file `path` (created if absent). `what` names the protected thing in the
    /// error, e.g. "run directory runs/x". Fails at once (no waiting) when another process
    /// holds it, naming the holder.
    pub fn acquire(path: &Path, what: &str) -> Result<DirLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                anyhow::bail!(
                    "{what} is in use by another advtrain process ({}; lock file {}): wait for it \
                     to finish or use another output",
                    holder_description(&text),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        let mut old = String::new();
        let _ = file.read_to_string(&mut old);
        if !old.trim().is_empty() {
            log::warn!(
                "taking over the stale lock of {what} left by {} (no longer running)",
                holder_description(&old)
            );
        }
        let me = serde_json::json!({
            "pid": std::process::id(),
            "host": host_name(),
            "since": chrono_like_now(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        });
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(me.to_string().as_bytes())?;
        file.sync_all()?;
        Ok(DirLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    /// A clean release empties the file (a non-empty unlocked file means its holder died).
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Seconds since the Unix epoch, as text (no date crate needed for a lock note).
fn chrono_like_now() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {s}")
}
