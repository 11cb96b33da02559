//! Writing a file whole or not at all: the new contents go to a temporary
//! name beside it, are synced, then renamed over the old file, so that a
//! crash, a full disk, a quota or a file-size limit leaves the old file or
//! the complete new one, never half of one under the final name. A failed
//! write removes its temporary file and names the file and the OS error.
//! [`PartialFile`] gives the same for a file written piece by piece, too
//! large to hold in memory first.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically (see the module).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Copies `from` to `to` atomically (see the module), or hard-links it
/// where the file system allows, which needs no space.
pub fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    replace_with(to, |tmp| match fs::hard_link(from, tmp) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(from, tmp).and_then(|_| File::open(tmp)?.sync_all()),
    })
}

/// `path`'s temporary name, made by `write`, then renamed over `path`.
fn replace_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temporary(path);
    // One left by a process killed mid-write would make hard_link fail.
    let _ = fs::remove_file(&tmp);
    if let Err(e) = write(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    rename_into_place(&tmp, path, dir)
}

/// Renames the finished `tmp` over `path`, in `dir`, durably.
fn rename_into_place(tmp: &Path, path: &Path, dir: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io(path, e));
    }
    // The rename itself is durable only once the directory is synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A file written in pieces under its temporary name (`NAME.tmp`), which
/// appears under its own name only once [`PartialFile::commit`] succeeds;
/// dropped uncommitted, the temporary file is removed.
pub struct PartialFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl PartialFile {
    /// Starts `path`, replacing a temporary file a killed process left.
    pub fn create(path: &Path) -> Result<PartialFile> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = temporary(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(PartialFile { path: path.to_path_buf(), tmp, file: Some(BufWriter::new(file)) })
    }

    /// Syncs the contents and renames them into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("only commit takes the file, and it consumes self");
        let synced = file.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all());
        if let Err(e) = synced {
            let _ = fs::remove_file(&self.tmp);
            return Err(Error::io(&self.path, e));
        }
        let dir =
            self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        rename_into_place(&self.tmp, &self.path, dir)
    }
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("present until commit").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("present until commit").flush()
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        write_atomically(&path, b"old").unwrap();
        // A directory where the temporary file goes makes every write fail.
        fs::create_dir(temporary(&path)).unwrap();
        fs::write(temporary(&path).join("x"), b"").unwrap();
        let err = write_atomically(&path, b"new").unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        fs::remove_dir_all(temporary(&path)).unwrap();
        write_atomically(&path, b"new").unwrap();
        copy_atomically(&path, &dir.path().join("copy")).unwrap();
        assert_eq!(fs::read(dir.path().join("copy")).unwrap(), b"new");
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_partial_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.tar");
        let mut f = PartialFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        f.flush().unwrap();
        assert!(!path.exists() && temporary(&path).exists());
        drop(f);
        assert!(!temporary(&path).exists(), "an uncommitted file leaves nothing");
        let mut f = PartialFile::create(&path).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        assert!(!temporary(&path).exists());
    }
}
