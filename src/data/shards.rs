//! WebDataset-style tar shards as a data set: an index of every image
//! member, made by one pass over each shard's headers at start-up, then
//! random access to any member by its offset.
//!
//! Why an index rather than a stream with a shuffle buffer: the loader makes
//! batch `k` of an epoch on whichever thread is free, from `(seed, epoch, k)`
//! alone (see [`crate::data::loader`]); an index keeps that, so the order of
//! an epoch, resuming mid-epoch bit for bit and the split over ranks are the
//! same code as for a folder, and the permutation is a full one rather than a
//! buffer's approximation of one. The pass reads 512-byte headers and seeks
//! over the data, so it costs about what a folder's header scan costs; a
//! member is later read with one seek and one read, never extracted.
//!
//! A sample is the WebDataset one: the members sharing a key (the name up to
//! the first dot of its last path part); its image member (`.jpg`, `.jpeg`,
//! `.png`, `.webp`) is used, anything else (`.json`, `.cls`, `.txt`) is
//! ignored. A sample with two image members gives two images, as a folder
//! with both files would.
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::dataset::{check_header_of, has_image_extension, ScanReport, HEADER_BYTES};
use crate::{Error, Result};

/// Tar's block: headers are one, data is padded to a multiple of it, and the
/// archive ends with (at least) one block of zeros.
const BLOCK: u64 = 512;

/// One image member of a shard.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    shard: usize,
    /// Where the member's data starts in the shard file.
    offset: u64,
    size: u64,
    name: String,
}

/// The image members of some tar shards, shard by shard, each shard's in
/// the order it holds them.
#[derive(Debug, Clone)]
pub struct Shards {
    files: Vec<PathBuf>,
    members: Vec<Member>,
    /// The members of shard `s` are `ranges[s]`.
    ranges: Vec<Range<usize>>,
}

impl Shards {
    /// Indexes `files` (in this order) and reads each image member's header,
    /// in parallel over shards. A member that is not a readable image goes
    /// to `report.bad` (as `SHARD/MEMBER`), a shard without images to
    /// `report.empty`; a shard cut short or damaged is an error naming the
    /// shard and the member where it breaks, since what follows is lost.
    pub fn scan(files: Vec<PathBuf>, report: &mut ScanReport) -> Result<Shards> {
        let scanned: Vec<Result<ShardScan>> =
            files.par_iter().enumerate().map(|(s, path)| scan_shard(s, path)).collect();
        let mut members = Vec::new();
        let mut ranges = Vec::with_capacity(files.len());
        for (res, path) in scanned.into_iter().zip(&files) {
            let ShardScan { good, bad, others } = res?;
            if good.is_empty() {
                report.empty.push(path.clone());
            }
            ranges.push(members.len()..members.len() + good.len());
            members.extend(good);
            report.bad.extend(bad);
            report.other_files += others;
        }
        Ok(Shards { files, members, ranges })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Which members each shard holds, by shard: what the loader splits
    /// over ranks.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// `SHARD/MEMBER`, the name errors and reports use for member `i`.
    pub fn name(&self, i: usize) -> PathBuf {
        let m = &self.members[i];
        self.files[m.shard].join(&m.name)
    }

    /// The bytes of member `i`.
    pub fn read(&self, i: usize) -> Result<Vec<u8>> {
        let m = &self.members[i];
        let path = &self.files[m.shard];
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        read_range(&mut file, m.offset, m.size).map_err(|e| Error::Image {
            path: self.name(i),
            reason: format!("cannot read the member from its shard: {e}"),
        })
    }
}

/// `size` bytes at `offset`; a file that ends sooner is an error.
fn read_range(file: &mut File, offset: u64, size: u64) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the shard ends after {} of its {size} bytes", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// One shard: its image members with readable headers, the unreadable ones
/// with why, and how many members are not images.
struct ShardScan {
    good: Vec<Member>,
    bad: Vec<(PathBuf, String)>,
    others: usize,
}

fn scan_shard(s: usize, path: &Path) -> Result<ShardScan> {
    let broken = |after: Option<&str>, why: String| {
        let place = match after {
            Some(name) => format!("after member {name}"),
            None => "before its first member".to_string(),
        };
        Error::data(path, format!("tar shard is truncated or damaged {place}: {why}"))
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive.entries_with_seek().map_err(|e| Error::io(path, e))?;
    let (mut images, mut others) = (Vec::new(), 0);
    let mut last: Option<String> = None;
    // Where the data of the last entry ends, padded to a whole block.
    let mut end = 0;
    for entry in entries {
        let entry = entry.map_err(|e| broken(last.as_deref(), e.to_string()))?;
        let (offset, size) = (entry.raw_file_position(), entry.size());
        let name = entry.path().map(|p| p.to_string_lossy().into_owned());
        let name = name.map_err(|e| broken(last.as_deref(), e.to_string()))?;
        if offset + size > len {
            return Err(Error::data(
                path,
                format!(
                    "tar shard is truncated in member {name}: it needs {size} bytes from byte \
                     {offset}, the file has {len}"
                ),
            ));
        }
        end = (offset + size).div_ceil(BLOCK) * BLOCK;
        if entry.header().entry_type().is_file() {
            if has_image_extension(Path::new(&name)) {
                images.push(Member { shard: s, offset, size, name: name.clone() });
            } else {
                others += 1;
            }
        }
        last = Some(name);
    }
    // The reader stops at the first block of zeros or at the end of the
    // file; only the first is the end of a whole archive. An empty file is
    // an empty shard, not a cut one.
    if len > 0 && end + BLOCK > len {
        return Err(broken(
            last.as_deref(),
            "the file ends without tar's end-of-archive blocks (an interrupted copy?)".into(),
        ));
    }

    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let (mut good, mut bad) = (Vec::with_capacity(images.len()), Vec::new());
    for m in images {
        let head = read_range(&mut file, m.offset, m.size.min(HEADER_BYTES as u64));
        let checked = match head {
            Ok(head) => {
                let mut whole = || read_range(&mut file, m.offset, m.size);
                check_header_of(&head, m.size, &mut whole)
            }
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(()) => good.push(m),
            Err(reason) => bad.push((path.join(&m.name), reason)),
        }
    }
    Ok(ShardScan { good, bad, others })
}

/// Expands shell-style braces as WebDataset writes shard lists:
/// `train-{000000..000009}.tar` (a range, zero-padded to the width of its
/// first bound when that has leading zeros) and `{a,b}` (alternatives), any
/// number of them, left to right. Text without braces is returned as is.
pub fn expand_braces(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("`}}` without `{{` in {pattern}"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("`{{` without `}}` in {pattern}"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let bound = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("`{{{body}}}` in {pattern} is not a range of numbers"))
        };
        let (lo, hi) = (bound(a)?, bound(b)?);
        if lo > hi {
            return Err(format!("the range `{{{body}}}` in {pattern} runs backwards"));
        }
        let width = if a.len() > 1 && a.starts_with('0') { a.len() } else { 0 };
        (lo..=hi).map(|n| format!("{n:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        return Err(format!(
            "`{{{body}}}` in {pattern} is neither a range `{{a..b}}` nor a list `{{a,b}}`"
        ));
    };
    let rest = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::png;

    /// A tar of `(name, bytes)` members, as WebDataset's writer makes them.
    pub(crate) fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, bytes.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn braces_expand_ranges_with_their_padding_and_lists() {
        assert_eq!(
            expand_braces("a-{000..002}.tar").unwrap(),
            ["a-000.tar", "a-001.tar", "a-002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{a,b}-{0..1}").unwrap(), ["a-0", "a-1", "b-0", "b-1"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["x{1..", "x{3..1}", "x{y}", "x}", "x{a..b}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_shard_is_indexed_with_its_image_members_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tar");
        let bytes = tar(&[
            ("000.png", png(3)),
            ("000.json", b"{}".to_vec()),
            ("sub/001.PNG", png(4)),
            ("002.jpg", b"not a jpeg".to_vec()),
        ]);
        std::fs::write(&path, bytes).unwrap();
        let mut report = ScanReport::default();
        let shards = Shards::scan(vec![path.clone()], &mut report).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards.name(1), path.join("sub/001.PNG"));
        assert_eq!(shards.read(1).unwrap(), png(4));
        assert_eq!(shards.ranges(), std::slice::from_ref(&(0..2)));
        assert_eq!(report.other_files, 1);
        assert_eq!(report.bad.len(), 1, "{report:?}");
        assert_eq!(report.bad[0].0, path.join("002.jpg"));
    }

    #[test]
    fn a_cut_shard_names_itself_and_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let whole = tar(&[("a.png", png(3)), ("b.png", png(200))]);
        // a.png's header and its data (one block), then b.png's header.
        assert!(png(3).len() < 512);
        let b_data = 3 * 512;
        // Cut inside b.png's data, and right after it (no end blocks).
        for (cut, member) in
            [(b_data + 10, "in member b.png"), (whole.len() - 1024, "after member b.png")]
        {
            let path = dir.path().join(format!("cut{cut}.tar"));
            std::fs::write(&path, &whole[..cut]).unwrap();
            let msg = Shards::scan(vec![path.clone()], &mut ScanReport::default())
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains(member), "{msg}");
        }
        // Cut inside b.png's header.
        let path = dir.path().join("header.tar");
        std::fs::write(&path, &whole[..b_data - 412]).unwrap();
        let msg = Shards::scan(vec![path], &mut ScanReport::default()).unwrap_err().to_string();
        assert!(msg.contains("header.tar") && msg.contains("after member a.png"), "{msg}");
    }

    #[test]
    fn an_empty_shard_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (zero, none) = (dir.path().join("zero.tar"), dir.path().join("none.tar"));
        std::fs::write(&zero, b"").unwrap();
        std::fs::write(&none, tar(&[("x.json", b"{}".to_vec())])).unwrap();
        let mut report = ScanReport::default();
        let shards = Shards::scan(vec![zero.clone(), none.clone()], &mut report).unwrap();
        assert!(shards.is_empty());
        assert_eq!(report.empty, vec![zero, none]);
    }

    #[test]
    fn a_member_cut_after_the_scan_is_an_image_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tar");
        let whole = tar(&[("a.png", png(3))]);
        std::fs::write(&path, &whole).unwrap();
        let shards = Shards::scan(vec![path.clone()], &mut ScanReport::default()).unwrap();
        std::fs::write(&path, &whole[..600]).unwrap();
        let err = shards.read(0).unwrap_err();
        assert!(
            matches!(&err, Error::Image { path: p, .. } if p.ends_with("s.tar/a.png")),
            "{err}"
        );
    }
}
