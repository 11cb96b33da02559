//! What `--data` names: which kind of input a path is, told from the path
//! alone so that the same argument means the same thing on every machine.
//!
//! - a folder tree of images (the default);
//! - tar shards: a folder whose top level holds `.tar` files (and no images
//!   or sub-folders beside them; other files, such as `data pack`'s
//!   `index.jsonl`, are ignored), one `.tar` file, or a brace pattern such
//!   as `train-{000000..001023}.tar`, as WebDataset writes shard lists;
//! - a `.zip` archive of an image tree (the reference PixPro's packed
//!   format);
//! - a `.txt` file listing image files, one a line, relative to the list's
//!   folder (blank lines skipped), read in the list's order.
use std::path::{Path, PathBuf};

use crate::data::dataset::has_image_extension;
use crate::data::shards::expand_braces;
use crate::{Error, Result};

/// One input, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Folder(PathBuf),
    /// The shard files, in the order their images are numbered.
    Shards(Vec<PathBuf>),
    Zip(PathBuf),
    List(PathBuf),
}

impl Source {
    /// The kind of `input` (see the module). A missing path, or a file of
    /// another kind, is an error naming it.
    pub fn of(input: &Path) -> Result<Source> {
        let text = input.to_string_lossy();
        if text.contains('{') {
            let files = expand_braces(&text).map_err(|why| Error::data(input, why))?;
            return Ok(Source::Shards(files.into_iter().map(PathBuf::from).collect()));
        }
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            return folder(input);
        }
        let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "tar" => Ok(Source::Shards(vec![input.to_path_buf()])),
            "zip" => Ok(Source::Zip(input.to_path_buf())),
            "txt" => Ok(Source::List(input.to_path_buf())),
            _ => Err(Error::data(
                input,
                "is a file, but not a .tar shard, a .zip archive or a .txt list of images \
                 (--data also takes a folder)",
            )),
        }
    }
}

/// A folder of shards or a tree of images, from its top level.
fn folder(dir: &Path) -> Result<Source> {
    let mut tars = Vec::new();
    let mut beside = None;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let is_tar = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar"));
        if is_tar && path.is_file() {
            tars.push(path);
        } else if path.is_dir() || has_image_extension(&path) {
            beside.get_or_insert(path);
        }
    }
    if tars.is_empty() {
        return Ok(Source::Folder(dir.to_path_buf()));
    }
    if let Some(other) = beside {
        // Either reading would silently leave out the other half.
        return Err(Error::data(
            dir,
            format!(
                "holds both .tar shards and images or sub-folders (such as {}); give the shards \
                 as a pattern, e.g. '{}/shard-{{000000..000009}}.tar', or move one kind out",
                other.display(),
                dir.display()
            ),
        ));
    }
    tars.sort();
    Ok(Source::Shards(tars))
}

/// The files a list names, relative to the list's folder, in its order.
pub fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let base = list.parent().unwrap_or(Path::new(""));
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| base.join(line))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_told_from_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.zip", "b.TXT", "c.tar", "d.bin"] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        assert_eq!(Source::of(&d.join("a.zip")).unwrap(), Source::Zip(d.join("a.zip")));
        assert_eq!(Source::of(&d.join("b.TXT")).unwrap(), Source::List(d.join("b.TXT")));
        assert_eq!(Source::of(&d.join("c.tar")).unwrap(), Source::Shards(vec![d.join("c.tar")]));
        let msg = Source::of(&d.join("d.bin")).unwrap_err().to_string();
        assert!(msg.contains("d.bin") && msg.contains(".zip"), "{msg}");
        let msg = Source::of(&d.join("missing")).unwrap_err().to_string();
        assert!(msg.contains("missing"), "{msg}");
        let pattern = d.join("s-{0..2}.tar");
        let want: Vec<_> = (0..3).map(|k| d.join(format!("s-{k}.tar"))).collect();
        assert_eq!(Source::of(&pattern).unwrap(), Source::Shards(want));
    }

    #[test]
    fn a_folder_of_tars_is_shards_and_a_mix_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("s1.tar"), b"").unwrap();
        std::fs::write(d.join("s0.tar"), b"").unwrap();
        std::fs::write(d.join("index.jsonl"), b"").unwrap();
        assert_eq!(
            Source::of(d).unwrap(),
            Source::Shards(vec![d.join("s0.tar"), d.join("s1.tar")])
        );
        std::fs::create_dir(d.join("photos")).unwrap();
        let msg = Source::of(d).unwrap_err().to_string();
        assert!(msg.contains("both .tar shards and images") && msg.contains("photos"), "{msg}");

        let images = tempfile::tempdir().unwrap();
        std::fs::create_dir(images.path().join("sub")).unwrap();
        assert_eq!(Source::of(images.path()).unwrap(), Source::Folder(images.path().into()));
    }

    #[test]
    fn a_list_is_read_relative_to_its_folder_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("l.txt");
        std::fs::write(&list, "b/2.jpg\r\n\n  \na.png\n/abs/x.jpg\n").unwrap();
        let files = read_list(&list).unwrap();
        assert_eq!(
            files,
            vec![dir.path().join("b/2.jpg"), dir.path().join("a.png"), PathBuf::from("/abs/x.jpg")]
        );
    }
}
