//! A zip archive of an image tree (the reference PixPro's packed format) as
//! a data set: the central directory, read once, says where each member
//! is; a member is read (and inflated, if it was deflated) on demand,
//! never extracted to disk.
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use zip::ZipArchive;

use crate::data::dataset::{check_header_of, has_image_extension, ScanReport, HEADER_BYTES};
use crate::{Error, Result};

/// macOS's zip tool stores resource forks here, as `._NAME.jpg` files that
/// are not images.
const MACOS_METADATA: &str = "__MACOSX/";

/// The image members of one zip archive, sorted by path as a folder's are.
#[derive(Debug, Clone)]
pub struct ZipImages {
    path: PathBuf,
    /// Cloned for each read: the clones share the central directory and
    /// each opens the file for itself, so reads on many threads need no lock.
    archive: ZipArchive<Reopen>,
    /// Index in the archive and name of each image.
    members: Vec<(usize, String)>,
}

impl ZipImages {
    /// Reads the central directory and every image member's header (in
    /// parallel); unreadable members go to `report.bad` as `ZIP/MEMBER`. An
    /// archive cut short has lost its central directory (it is at the end),
    /// so that is an error naming the archive and the last member whose
    /// data is still whole.
    pub fn scan(path: &Path, report: &mut ScanReport) -> Result<ZipImages> {
        let archive = match ZipArchive::new(Reopen::new(path)) {
            Ok(a) => a,
            Err(e) => return Err(Error::data(path, broken_zip(path, &e.to_string()))),
        };
        let mut members = Vec::new();
        for k in 0..archive.len() {
            let entry = archive.by_index_data(k).map_err(|e| Error::data(path, e.to_string()))?;
            let name = entry.name().map_err(|e| Error::data(path, e.to_string()))?.into_owned();
            if !entry.is_file() {
                continue;
            }
            if !name.starts_with(MACOS_METADATA) && has_image_extension(Path::new(&name)) {
                members.push((k, name));
            } else {
                report.other_files += 1;
            }
        }
        members.sort_by(|a, b| Path::new(&a.1).cmp(Path::new(&b.1)));

        let checked: Vec<Result<(), String>> = members
            .par_chunks(256)
            .flat_map_iter(|chunk| {
                let mut archive = archive.clone();
                chunk.iter().map(move |(k, _)| check_member(&mut archive, *k)).collect::<Vec<_>>()
            })
            .collect();
        let mut good = Vec::with_capacity(members.len());
        for (m, res) in members.into_iter().zip(checked) {
            match res {
                Ok(()) => good.push(m),
                Err(reason) => report.bad.push((path.join(&m.1), reason)),
            }
        }
        Ok(ZipImages { path: path.to_path_buf(), archive, members: good })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `ZIP/MEMBER`.
    pub fn name(&self, i: usize) -> PathBuf {
        self.path.join(&self.members[i].1)
    }

    /// The (inflated) bytes of member `i`; the zip reader checks them
    /// against the stored CRC.
    pub fn read(&self, i: usize) -> Result<Vec<u8>> {
        read_member(&mut self.archive.clone(), self.members[i].0)
            .map_err(|reason| Error::Image { path: self.name(i), reason })
    }
}

fn read_member(archive: &mut ZipArchive<Reopen>, k: usize) -> Result<Vec<u8>, String> {
    let mut file = archive.by_index(k).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn check_member(archive: &mut ZipArchive<Reopen>, k: usize) -> Result<(), String> {
    let mut file = archive.by_index(k).map_err(|e| e.to_string())?;
    let size = file.size();
    let mut head = Vec::with_capacity(HEADER_BYTES);
    (&mut file).take(HEADER_BYTES as u64).read_to_end(&mut head).map_err(|e| e.to_string())?;
    drop(file);
    check_header_of(&head, size, &mut || read_member(archive, k).map_err(std::io::Error::other))
}

/// Why an archive without a readable central directory cannot be used,
/// with the last member that reads whole when the local headers are walked
/// from the start (what an interrupted copy leaves).
fn broken_zip(path: &Path, why: &str) -> String {
    let mut last: Option<String> = None;
    if let Ok(file) = File::open(path) {
        let mut reader = BufReader::new(file);
        while let Ok(Some(mut member)) = zip::read::read_zipfile_from_stream(&mut reader) {
            let name = member.name().map(|n| n.into_owned()).unwrap_or_default();
            if std::io::copy(&mut member, &mut std::io::sink()).is_err() {
                break;
            }
            last = Some(name);
        }
    }
    let place = match last {
        Some(name) => format!("; the last whole member is {name}"),
        None => String::new(),
    };
    format!("zip archive is truncated or damaged (no readable central directory: {why}){place}")
}

/// A file opened on first use and not shared by clones: each clone of the
/// archive has a position of its own.
struct Reopen {
    path: Arc<PathBuf>,
    file: Option<BufReader<File>>,
}

impl Reopen {
    fn new(path: &Path) -> Reopen {
        Reopen { path: Arc::new(path.to_path_buf()), file: None }
    }

    fn file(&mut self) -> std::io::Result<&mut BufReader<File>> {
        if self.file.is_none() {
            self.file = Some(BufReader::new(File::open(&*self.path)?));
        }
        Ok(self.file.as_mut().expect("opened just above"))
    }
}

impl Clone for Reopen {
    fn clone(&self) -> Reopen {
        Reopen { path: Arc::clone(&self.path), file: None }
    }
}

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reopen({})", self.path.display())
    }
}

impl Read for Reopen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file()?.read(buf)
    }
}

impl Seek for Reopen {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file()?.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::png;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    fn zip_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (k, (name, bytes)) in members.iter().enumerate() {
            // Both kinds the reference's archives hold.
            let method = if k % 2 == 0 {
                zip::CompressionMethod::Stored
            } else {
                zip::CompressionMethod::Deflated
            };
            w.start_file(*name, SimpleFileOptions::default().compression_method(method)).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn image_members_are_found_sorted_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.zip");
        let bytes = zip_of(&[
            ("train/b/2.png", png(2)),
            ("train/a.png", png(1)),
            ("train/labels.txt", b"x".to_vec()),
            ("__MACOSX/train/._a.png", b"fork".to_vec()),
            ("train/c.jpg", b"not a jpeg".to_vec()),
        ]);
        std::fs::write(&path, bytes).unwrap();
        let mut report = ScanReport::default();
        let zip = ZipImages::scan(&path, &mut report).unwrap();
        assert_eq!(zip.len(), 2);
        assert_eq!(zip.name(0), path.join("train/a.png"));
        assert_eq!(zip.read(1).unwrap(), png(2));
        assert_eq!(report.other_files, 2);
        assert_eq!(report.bad.len(), 1, "{report:?}");
        assert_eq!(report.bad[0].0, path.join("train/c.jpg"));
    }

    #[test]
    fn a_cut_archive_names_itself_and_the_last_whole_member() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.zip");
        let bytes = zip_of(&[("a.png", png(3)), ("b.png", png(300))]);
        std::fs::write(&path, &bytes[..bytes.len() - 200]).unwrap();
        let msg = ZipImages::scan(&path, &mut ScanReport::default()).unwrap_err().to_string();
        assert!(msg.contains("cut.zip") && msg.contains("truncated"), "{msg}");
        assert!(msg.contains("the last whole member is"), "{msg}");
    }
}
