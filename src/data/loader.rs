//! Batches of view pairs made by background threads, deterministic and
//! resumable (spec section 1 applied to a whole data set; the global batch of
//! section 6 split over ranks).
//!
//! Everything random is a pure function of the seed: the order of epoch `e`
//! depends on `(seed, e)` only, and the views of image `i` in epoch `e` on
//! `(seed, e, i)` only. So the batches are the same whatever the number of
//! workers, the timing, or the point a run was resumed from.
//!
//! Ranks share an epoch in one of two ways, both disjoint. Usually each
//! global batch is cut into one slice per rank. Tar shards read by several
//! ranks, at least as many shards as ranks, are instead split over the
//! ranks whole (each rank reads only its own files, as WebDataset's
//! `split_by_node` does): the same shards for a rank in every epoch, so the
//! number of batches per epoch is fixed, and a permutation of its shards'
//! images per epoch, seeded by `(seed, rank, e)`.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::dataset::{Dataset, Opened};
use crate::data::views::{two_views_decoded, AugmentConfig};
use crate::{Error, Result};

/// How batches are cut and produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Global batch over all ranks; each rank gets `batch_size / world_size`.
    pub batch_size: usize,
    /// Threads decoding and augmenting. Each makes whole batches on one core.
    /// libtorch already runs the model on its own intra-op threads, so the
    /// caller chooses: roughly the cores left after libtorch's share on a
    /// CPU run, and as many cores as the machine has per GPU on a GPU run,
    /// where the model does not need the CPU.
    pub workers: usize,
    /// Batches made ahead of the consumer (claimed, in progress or waiting).
    /// At least `workers` keeps every worker busy.
    pub prefetch: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
}

/// One rank's share of one global batch. `B` is the per-rank batch and `S`
/// the view size.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, 3, S, S]`, normalised.
    pub view1: Vec<f32>,
    /// `[B, 3, S, S]`, normalised.
    pub view2: Vec<f32>,
    /// `[B]` crop coordinates `[x0, y0, x1, y1]` of view 1 in its source.
    pub coords1: Vec<[f32; 4]>,
    pub coords2: Vec<[f32; 4]>,
    /// `[B]` data set indices the batch was drawn for (before any
    /// replacement of an undecodable file).
    pub indices: Vec<usize>,
    pub epoch: u64,
    pub index_in_epoch: usize,
    pub image_size: usize,
    /// Files that failed to decode while making this batch, and why; each
    /// was replaced by the next decodable image of the data set.
    pub replaced: Vec<(PathBuf, String)>,
}

/// Makes [`Batch`]es of a data set; see [`Loader::iter_from`].
pub struct Loader {
    shared: Arc<Shared>,
}

/// What every worker reads.
struct Shared {
    dataset: Arc<Dataset>,
    aug: AugmentConfig,
    cfg: LoaderConfig,
    split: Split,
    batches_per_epoch: usize,
}

/// How the ranks share an epoch (see the module).
enum Split {
    /// Each global batch is cut into one slice per rank.
    Samples,
    /// This rank's images: those of its shards, in shard order.
    Shards(Vec<usize>),
}

impl Loader {
    /// Checks that the configuration can make at least one batch.
    pub fn new(dataset: Arc<Dataset>, aug: AugmentConfig, cfg: LoaderConfig) -> Result<Loader> {
        aug.validate()?;
        if cfg.world_size == 0 {
            return Err(Error::config("world_size", "must be at least 1"));
        }
        if cfg.batch_size == 0 || !cfg.batch_size.is_multiple_of(cfg.world_size) {
            return Err(Error::config(
                "batch_size",
                format!(
                    "the global batch {} must be a positive multiple of the world size {}",
                    cfg.batch_size, cfg.world_size
                ),
            ));
        }
        if cfg.rank >= cfg.world_size {
            return Err(Error::config(
                "rank",
                format!("rank {} is not below the world size {}", cfg.rank, cfg.world_size),
            ));
        }
        if cfg.workers == 0 {
            return Err(Error::config("workers", "must be at least 1"));
        }
        if cfg.prefetch == 0 {
            return Err(Error::config("prefetch", "must be at least 1"));
        }
        let ranges = dataset.shard_ranges();
        let (split, batches_per_epoch) = if cfg.world_size > 1 && ranges.len() >= cfg.world_size {
            let shares = assign_shards(ranges, cfg.world_size);
            let b = cfg.batch_size / cfg.world_size;
            let fewest = shares.iter().map(Vec::len).min().expect("world_size is at least 1");
            if fewest < b {
                return Err(Error::data(
                    dataset.root(),
                    format!(
                        "the {} shards split over {} ranks give a rank only {fewest} images, fewer \
                         than its batch of {b}; use a smaller --batch-size",
                        ranges.len(),
                        cfg.world_size
                    ),
                ));
            }
            let own = shares.into_iter().nth(cfg.rank).expect("rank is below world_size");
            (Split::Shards(own), fewest / b)
        } else {
            (Split::Samples, dataset.len() / cfg.batch_size)
        };
        if batches_per_epoch == 0 {
            return Err(Error::data(
                dataset.root(),
                format!(
                    "only {} readable images, fewer than one batch of {}; use a smaller --batch-size",
                    dataset.len(),
                    cfg.batch_size
                ),
            ));
        }
        Ok(Loader { shared: Arc::new(Shared { dataset, aug, cfg, split, batches_per_epoch }) })
    }

    /// Full global batches per epoch; the last partial one is dropped so
    /// every step has the same batch size.
    pub fn batches_per_epoch(&self) -> usize {
        self.shared.batches_per_epoch
    }

    /// Images in the data set (all ranks').
    pub fn images(&self) -> usize {
        self.shared.dataset.len()
    }

    /// Worker threads making batches.
    pub fn workers(&self) -> usize {
        self.shared.cfg.workers
    }

    /// This rank's batch size, `batch_size / world_size`.
    pub fn rank_batch_size(&self) -> usize {
        self.shared.cfg.batch_size / self.shared.cfg.world_size
    }

    /// Batches in order, endlessly over epochs, starting with batch
    /// `index_in_epoch` of `epoch` (an index past the epoch's end carries
    /// into later epochs). Workers start now; dropping the iterator stops and
    /// joins them. After an `Err` (every file undecodable, or a worker bug)
    /// the iterator ends.
    pub fn iter_from(&self, epoch: u64, index_in_epoch: usize) -> BatchIter {
        let shared = Arc::clone(&self.shared);
        let bpe = shared.batches_per_epoch as u64;
        let first = epoch * bpe + index_in_epoch as u64;
        let prefetch = shared.cfg.prefetch;
        let (token_tx, token_rx) = crossbeam_channel::bounded(prefetch);
        for _ in 0..prefetch {
            token_tx.send(()).expect("the channel holds exactly `prefetch` tokens");
        }
        let (result_tx, result_rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first));
        let threads = (0..shared.cfg.workers)
            .map(|w| {
                let worker = Worker {
                    shared: Arc::clone(&shared),
                    stop: Arc::clone(&stop),
                    next: Arc::clone(&next),
                    tokens: token_rx.clone(),
                    results: result_tx.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("pixpro-loader-{w}"))
                    .spawn(move || worker.run())
                    .expect("the OS refused to start a loader thread")
            })
            .collect();
        BatchIter {
            root: shared.dataset.root().to_path_buf(),
            next: first,
            pending: BTreeMap::new(),
            results: result_rx,
            tokens: Some(token_tx),
            stop,
            threads,
            done: false,
        }
    }
}

/// The iterator of [`Loader::iter_from`]. Holds the worker threads.
pub struct BatchIter {
    root: PathBuf,
    /// Sequence number (epoch * batches_per_epoch + index) to hand out next.
    next: u64,
    /// Batches that finished before their predecessors.
    pending: BTreeMap<u64, Result<Batch>>,
    results: Receiver<(u64, Result<Batch>)>,
    /// One token per batch a worker may start; returned as batches are
    /// consumed, so at most `prefetch` are ahead. `None` once stopping.
    tokens: Option<Sender<()>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    done: bool,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(res) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(tokens) = &self.tokens {
                    // Cannot fail: the workers hold the receiver until we drop.
                    let _ = tokens.send(());
                }
                self.done = res.is_err();
                return Some(res);
            }
            match self.results.recv() {
                Ok((seq, res)) => {
                    self.pending.insert(seq, res);
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err(Error::data(&self.root, "the loader threads stopped")));
                }
            }
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the workers waiting for a token.
        self.tokens = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    tokens: Receiver<()>,
    results: Sender<(u64, Result<Batch>)>,
}

impl Worker {
    fn run(self) {
        let bpe = self.shared.batches_per_epoch as u64;
        // Each worker keeps the order of the epoch it is in: recomputing it
        // per batch would cost O(data set) every time.
        let (mut order_epoch, mut order) = (None, Vec::new());
        while self.tokens.recv().is_ok() && !self.stop.load(Ordering::Relaxed) {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let (epoch, index) = (seq / bpe, (seq % bpe) as usize);
            if order_epoch != Some(epoch) {
                order = rank_order(&self.shared, epoch);
                order_epoch = Some(epoch);
            }
            // A panic here is a bug, but it must reach the consumer as an
            // error: a silently missing batch would make it wait forever.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                make_batch(&self.shared, &order, epoch, index, &self.stop)
            }));
            let res = match made {
                Ok(Some(res)) => res,
                Ok(None) => return,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(Error::data(
                        self.shared.dataset.root(),
                        format!("loader thread panicked on batch {index} of epoch {epoch}: {what}"),
                    ))
                }
            };
            if self.results.send((seq, res)).is_err() {
                return;
            }
        }
    }
}

/// splitmix64's finaliser: consecutive inputs give unrelated outputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0, |h, &p| splitmix64(h ^ p))
}

/// Separate streams, so a permutation seed never equals a sample seed.
const ORDER_STREAM: u64 = 1;
const VIEW_STREAM: u64 = 2;
const SHARD_STREAM: u64 = 3;

/// The order of epoch `epoch`: Fisher-Yates driven by `(seed, epoch)` only.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[seed, ORDER_STREAM, epoch]));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Through u64 so the draw is the same on 32- and 64-bit targets.
        let j = rng.random_range(0..=i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// Shards to ranks: each shard, the largest first, to the rank with the
/// fewest images so far (ties to the lower rank and shard), so the shares
/// are as even as whole shards allow and the same on every rank. Returns
/// each rank's images, in shard order.
fn assign_shards(ranges: &[Range<usize>], world: usize) -> Vec<Vec<usize>> {
    let mut by_size: Vec<usize> = (0..ranges.len()).collect();
    by_size.sort_by_key(|&s| (std::cmp::Reverse(ranges[s].len()), s));
    let mut owner = vec![0; ranges.len()];
    let mut load = vec![0; world];
    for s in by_size {
        let r = (0..world).min_by_key(|&r| (load[r], r)).expect("world is at least 1");
        owner[s] = r;
        load[r] += ranges[s].len();
    }
    let mut shares = vec![Vec::new(); world];
    for (s, range) in ranges.iter().enumerate() {
        shares[owner[s]].extend(range.clone());
    }
    shares
}

/// This rank's images of epoch `epoch`, batch after batch: batch `k` is
/// `order[k * b..(k + 1) * b]` for the per-rank batch `b`.
fn rank_order(shared: &Shared, epoch: u64) -> Vec<usize> {
    let cfg = &shared.cfg;
    let b = cfg.batch_size / cfg.world_size;
    let batches = shared.batches_per_epoch;
    match &shared.split {
        Split::Samples => {
            let perm = permutation(shared.dataset.len(), cfg.seed, epoch);
            (0..batches)
                .flat_map(|k| {
                    let start = k * cfg.batch_size + cfg.rank * b;
                    perm[start..start + b].iter().copied()
                })
                .collect()
        }
        Split::Shards(own) => {
            let seed = mix(&[cfg.seed, SHARD_STREAM, cfg.rank as u64]);
            let perm = permutation(own.len(), seed, epoch);
            perm.into_iter().take(batches * b).map(|j| own[j]).collect()
        }
    }
}

/// The random stream for both views of image `index` in epoch `epoch`.
pub fn view_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, VIEW_STREAM, epoch, index as u64]))
}

/// Batch `index` of `epoch` for this rank, or `None` when asked to stop.
fn make_batch(
    shared: &Shared,
    order: &[usize],
    epoch: u64,
    index: usize,
    stop: &AtomicBool,
) -> Option<Result<Batch>> {
    let cfg = &shared.cfg;
    let b = cfg.batch_size / cfg.world_size;
    let indices = order[index * b..(index + 1) * b].to_vec();
    let s = shared.aug.image_size as usize;
    let mut batch = Batch {
        view1: Vec::with_capacity(b * 3 * s * s),
        view2: Vec::with_capacity(b * 3 * s * s),
        coords1: Vec::with_capacity(b),
        coords2: Vec::with_capacity(b),
        indices,
        epoch,
        index_in_epoch: index,
        image_size: s,
        replaced: Vec::new(),
    };
    for k in 0..b {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = batch.indices[k];
        let views = views_or_replace(&shared.dataset, i, &mut batch.replaced, |ds, j| {
            let bytes = ds.read(j)?;
            let image = |reason| Error::Image { path: ds.path(j), reason };
            let opened = Opened::new(&bytes).map_err(image)?;
            let (w, h) = opened.dimensions();
            let rng = &mut view_rng(cfg.seed, epoch, i);
            two_views_decoded(w, h, &shared.aug, rng, |d| opened.decode(d)).map_err(image)
        });
        let (v1, v2) = match views {
            Ok(views) => views,
            Err(e) => return Some(Err(e)),
        };
        batch.view1.extend_from_slice(&v1.pixels);
        batch.view2.extend_from_slice(&v2.pixels);
        batch.coords1.push(v1.coords);
        batch.coords2.push(v2.coords);
    }
    Some(Ok(batch))
}

/// `views(ds, i)`, or if image `i` cannot be read or decoded the views of
/// the next one that can (wrapping around), so a bad file costs a warning
/// rather than the run. The caller seeds the views by `i` whichever image
/// they come from.
fn views_or_replace<T>(
    ds: &Dataset,
    i: usize,
    replaced: &mut Vec<(PathBuf, String)>,
    mut views: impl FnMut(&Dataset, usize) -> Result<T>,
) -> Result<T> {
    let n = ds.len();
    for k in 0..n {
        let j = (i + k) % n;
        match views(ds, j) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let reason = match e {
                    Error::Image { reason, .. } => reason,
                    other => other.to_string(),
                };
                let path = ds.path(j);
                tracing::warn!(path = %path.display(), %reason, "cannot decode image; using the next one");
                replaced.push((path, reason));
            }
        }
    }
    Err(Error::data(
        ds.root(),
        format!("none of the {n} images could be decoded any more (were the files changed after the scan?)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn folder(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..n {
            let img = RgbImage::from_fn(40 + k as u32, 36, |x, y| {
                Rgb([(x * 6) as u8, (y * 7) as u8, (k * 20) as u8])
            });
            img.save(dir.path().join(format!("{k:03}.png"))).unwrap();
        }
        dir
    }

    fn aug() -> AugmentConfig {
        AugmentConfig { image_size: 32, ..AugmentConfig::default() }
    }

    fn config(batch_size: usize, workers: usize) -> LoaderConfig {
        LoaderConfig { batch_size, workers, prefetch: 3, seed: 7, rank: 0, world_size: 1 }
    }

    fn loader(root: &Path, cfg: LoaderConfig) -> Loader {
        let (ds, _) = Dataset::scan(root).unwrap();
        Loader::new(Arc::new(ds), aug(), cfg).unwrap()
    }

    fn take(l: &Loader, epoch: u64, index: usize, n: usize) -> Vec<Batch> {
        l.iter_from(epoch, index).take(n).map(|b| b.unwrap()).collect()
    }

    #[test]
    fn batches_do_not_depend_on_the_number_of_workers() {
        let dir = folder(10);
        let one = loader(dir.path(), config(4, 1));
        assert_eq!(one.batches_per_epoch(), 2);
        let a = take(&one, 0, 0, 5);
        let b = take(&loader(dir.path(), config(4, 3)), 0, 0, 5);
        assert_eq!(a, b);
        let shape: Vec<_> = a.iter().map(|b| (b.epoch, b.index_in_epoch)).collect();
        assert_eq!(shape, vec![(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]);
        let first = &a[0];
        assert_eq!(first.view1.len(), 4 * 3 * 32 * 32);
        assert_eq!((first.coords1.len(), first.coords2.len(), first.image_size), (4, 4, 32));
        assert!(first.replaced.is_empty());
    }

    #[test]
    fn epochs_are_different_permutations() {
        let p0 = permutation(100, 7, 0);
        let p1 = permutation(100, 7, 1);
        assert_ne!(p0, p1);
        assert_eq!(p0, permutation(100, 7, 0));
        assert_ne!(p0, permutation(100, 8, 0));
        let mut sorted = p1.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn resuming_gives_the_same_batches() {
        let dir = folder(9);
        let l = loader(dir.path(), config(3, 2));
        let fresh = take(&l, 0, 0, 6);
        assert_eq!(take(&l, 1, 1, 2), fresh[4..6]);
        // An index past the end of the epoch carries over.
        assert_eq!(take(&l, 0, 4, 1), fresh[4..5]);
    }

    #[test]
    fn rank_slices_make_up_the_global_batch() {
        let dir = folder(12);
        let whole = take(&loader(dir.path(), config(6, 2)), 0, 0, 3);
        let ranks: Vec<Vec<Batch>> = (0..3)
            .map(|rank| {
                let cfg = LoaderConfig { rank, world_size: 3, ..config(6, 2) };
                let l = loader(dir.path(), cfg);
                assert_eq!(l.rank_batch_size(), 2);
                take(&l, 0, 0, 3)
            })
            .collect();
        for (k, w) in whole.iter().enumerate() {
            let cat =
                |f: fn(&Batch) -> Vec<f32>| ranks.iter().flat_map(|r| f(&r[k])).collect::<Vec<_>>();
            assert_eq!(cat(|b| b.view1.clone()), w.view1);
            assert_eq!(cat(|b| b.view2.clone()), w.view2);
            let idx: Vec<usize> = ranks.iter().flat_map(|r| r[k].indices.clone()).collect();
            assert_eq!(idx, w.indices);
        }
    }

    #[test]
    fn a_truncated_file_is_replaced_and_reported() {
        let dir = folder(4);
        let mut bytes = Vec::new();
        RgbImage::from_fn(256, 256, |x, y| Rgb([(x * y) as u8, (x ^ y) as u8, (x + y) as u8]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        // Headers intact, scan data cut: what an interrupted copy leaves.
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let (ds, report) = Dataset::scan(dir.path()).unwrap();
        assert!(report.bad.is_empty(), "the header is intact: {report:?}");
        assert_eq!(ds.len(), 5);
        let l = Loader::new(Arc::new(ds), aug(), config(5, 2)).unwrap();
        let batch = l.iter_from(0, 0).next().unwrap().unwrap();
        assert_eq!(batch.replaced.len(), 1, "{:?}", batch.replaced);
        assert_eq!(batch.replaced[0].0, cut);
        assert_eq!(batch.view1.len(), 5 * 3 * 32 * 32);
    }

    #[test]
    fn every_file_failing_is_an_error_not_a_hang() {
        let dir = folder(3);
        let (ds, _) = Dataset::scan(dir.path()).unwrap();
        for k in 0..3 {
            std::fs::write(dir.path().join(format!("{k:03}.png")), "gone").unwrap();
        }
        let l = Loader::new(Arc::new(ds), aug(), config(2, 1)).unwrap();
        let mut it = l.iter_from(0, 0);
        let msg = it.next().unwrap().unwrap_err().to_string();
        assert!(msg.contains("none of the 3 images could be decoded"), "{msg}");
        assert!(it.next().is_none());
    }

    #[test]
    fn dropping_the_iterator_stops_the_workers_promptly() {
        let dir = folder(16);
        let l = loader(dir.path(), LoaderConfig { prefetch: 8, ..config(4, 4) });
        let mut it = l.iter_from(0, 0);
        it.next().unwrap().unwrap();
        let t = Instant::now();
        drop(it);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn new_explains_impossible_configurations() {
        let dir = folder(3);
        let (ds, _) = Dataset::scan(dir.path()).unwrap();
        let ds = Arc::new(ds);
        let err = |cfg| Loader::new(Arc::clone(&ds), aug(), cfg).err().unwrap().to_string();
        let msg = err(config(8, 1));
        assert!(msg.contains("only 3 readable images") && msg.contains("--batch-size"), "{msg}");
        let msg = err(LoaderConfig { world_size: 2, ..config(3, 1) });
        assert!(msg.contains("multiple of the world size 2"), "{msg}");
        assert!(err(config(2, 0)).contains("workers"));
    }

    #[test]
    fn shards_go_to_ranks_as_evenly_as_whole_shards_allow() {
        // Shard sizes 5, 1, 4, 2, 2: largest first to the emptiest rank.
        let ranges = [0..5, 5..6, 6..10, 10..12, 12..14];
        let shares = assign_shards(&ranges, 2);
        // Rank 0 takes shards 0 and 4 (5 + 2), rank 1 shards 2, 3, 1 (4 + 2 + 1).
        assert_eq!(shares[0], [0, 1, 2, 3, 4, 12, 13]);
        assert_eq!(shares[1], [5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(
            assign_shards(&ranges, 5).iter().map(Vec::len).collect::<Vec<_>>(),
            [5, 4, 2, 2, 1]
        );
    }

    #[test]
    fn view_streams_differ_per_image_and_epoch() {
        let draw = |s, e, i| view_rng(s, e, i).random::<u64>();
        assert_ne!(draw(1, 0, 0), draw(1, 0, 1));
        assert_ne!(draw(1, 0, 0), draw(1, 1, 0));
        assert_ne!(draw(1, 0, 0), draw(2, 0, 0));
        assert_eq!(draw(1, 3, 5), draw(1, 3, 5));
    }
}
