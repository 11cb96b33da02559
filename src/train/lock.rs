//! One owner per directory: a run, an experiment or a data set that a
//! command writes and may later resume is held by one process at a time.
//!
//! Two processes on one `--out` (a double click, a requeued job while the
//! old one still runs) would otherwise both append to `metrics.jsonl` and
//! overwrite each other's checkpoints. The lock is the OS's advisory file
//! lock (`flock` on Unix, `LockFileEx` on Windows, through std) on
//! `DIR/.lock`: the kernel drops it when the holder exits, however it
//! exits, so a killed run never leaves a lock to clean up by hand. The file
//! itself only says who holds it (PID, host, start time), for the error the
//! next process prints; it is left in place.
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::SystemTime;

use crate::{Error, Result};

/// The lock file's name inside the directory it guards.
pub const LOCK_FILE: &str = ".lock";

/// The locks this process holds, by directory. An OS lock is held per open
/// file, so the same process taking it twice (the command line, then the
/// library function it calls) would refuse itself; it shares the first.
static HELD: LazyLock<Mutex<HashMap<PathBuf, Weak<File>>>> = LazyLock::new(Default::default);

/// Held while it lives; the directory is free again once every copy taken
/// by this process is dropped (or the process ends).
#[must_use = "the directory is free again as soon as the lock is dropped"]
#[derive(Clone)]
pub struct DirLock {
    _file: Arc<File>,
}

impl DirLock {
    /// Makes `dir` if needed and takes its lock, or fails at once with
    /// [`Error::Busy`] naming the holder.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let key = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let mut held = HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = held.get(&key).and_then(Weak::upgrade) {
            return Ok(DirLock { _file: file });
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder may not have written its line yet.
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process (it has not yet written who it is)".to_string(),
                    h => h.to_string(),
                };
                return Err(Error::Busy { dir: dir.to_path_buf(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let line = format!(
            "pid {} on {} since {}\n",
            std::process::id(),
            gethostname::gethostname().to_string_lossy(),
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(line.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        let file = Arc::new(file);
        held.retain(|_, w| w.strong_count() > 0);
        held.insert(key, Arc::downgrade(&file));
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shares_its_lock_and_frees_it_when_the_last_copy_drops() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = DirLock::acquire(&run).unwrap();
        let second = DirLock::acquire(&run).unwrap();
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("pid {} on ", std::process::id())), "{text}");
        // Another open file of the same lock is what a second process has.
        let other = File::options().read(true).write(true).open(run.join(LOCK_FILE)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(first);
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(second);
        other.try_lock().unwrap();
        let err = DirLock::acquire(&run).err().unwrap().to_string();
        assert!(err.contains(&run.display().to_string()), "{err}");
    }
}
