//! Every kind of `--data` input against the folder it was made from: tar
//! shards (from `data pack`, as a folder and as a brace pattern), a zip
//! archive and a list give the same images per epoch; the order is fixed by
//! the seed; two ranks share an epoch disjointly; resuming a pretraining on
//! shards mid-epoch is bit-exact; broken shards and members are named.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pixpro::data::dataset::Dataset;
use pixpro::data::loader::{Batch, Loader, LoaderConfig};
use pixpro::data::views::AugmentConfig;
use pixpro::tools::pack::{pack, PackOptions};
use pixpro::train::config::Config;
use pixpro::train::pretrain;

mod common;
use common::{make_images, options, tensors, TINY};

const IMAGES: u32 = 12;

/// The folder's image files, relative to it, sorted as the folder scan does.
fn relative_files(dir: &Path) -> Vec<PathBuf> {
    let (ds, _) = Dataset::scan(dir).unwrap();
    (0..ds.len()).map(|i| ds.path(i).strip_prefix(dir).unwrap().to_path_buf()).collect()
}

fn pack_options(from: &Path, out: &Path, shard_size: u64) -> PackOptions {
    PackOptions { from: from.into(), out: out.into(), shard_size, max_side: None, quiet: true }
}

/// A zip of the folder's tree, under a top folder as the reference's
/// `train.zip` has, the members in reverse order (the archive's order must
/// not matter).
fn zip_folder(dir: &Path, zip: &Path) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(zip).unwrap());
    for rel in relative_files(dir).iter().rev() {
        let name = format!("train/{}", rel.display());
        w.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(&std::fs::read(dir.join(rel)).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

fn loader(ds: Dataset, batch_size: usize, seed: u64, rank: usize, world_size: usize) -> Loader {
    let cfg = LoaderConfig { batch_size, workers: 2, prefetch: 2, seed, rank, world_size };
    Loader::new(Arc::new(ds), AugmentConfig { image_size: 32, ..Default::default() }, cfg).unwrap()
}

/// The batches of epoch `epoch` (all of them).
fn epoch(l: &Loader, epoch: u64) -> Vec<Batch> {
    l.iter_from(epoch, 0).take(l.batches_per_epoch()).map(|b| b.unwrap()).collect()
}

fn open(input: &Path) -> Dataset {
    let (ds, report) = Dataset::open(input).unwrap();
    assert!(report.bad.is_empty() && report.empty.is_empty(), "{report:?}");
    ds
}

/// The decoded pixels of every image an epoch drew, sorted: the epoch's
/// images as a set, whatever they are named.
fn pixels_of_epoch(input: &Path) -> Vec<Vec<u8>> {
    let ds = open(input);
    let l = loader(ds.clone(), 4, 3, 0, 1);
    let mut seen: Vec<Vec<u8>> = epoch(&l, 0)
        .iter()
        .flat_map(|b| b.indices.clone())
        .map(|i| ds.load(i).unwrap().into_raw())
        .collect();
    seen.sort();
    seen
}

#[test]
fn shards_zip_and_list_give_the_folders_images_each_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("images");
    make_images(&folder, IMAGES);
    let shards = tmp.path().join("shards");
    let s = pack(&pack_options(&folder, &shards, 20_000)).unwrap();
    assert_eq!(s.images, IMAGES as usize);
    assert!(s.shards > 1, "{s:?}");
    let last = s.shards - 1;
    let pattern = tmp.path().join(format!("shards/shard-{{000000..{last:06}}}.tar"));
    let zip = tmp.path().join("train.zip");
    zip_folder(&folder, &zip);
    let list = tmp.path().join("list.txt");
    let names: Vec<String> =
        relative_files(&folder).iter().map(|p| format!("images/{}", p.display())).collect();
    std::fs::write(&list, names.join("\n")).unwrap();

    let want = pixels_of_epoch(&folder);
    assert_eq!(want.len(), IMAGES as usize);
    for input in [&shards, &pattern, &zip, &list] {
        assert_eq!(pixels_of_epoch(input), want, "{}", input.display());
    }

    // Each numbers the images as the folder does (pack and the list keep
    // the folder's order, the zip is sorted by path), so one process draws
    // the very same batches from all of them.
    let batches = |input: &Path| epoch(&loader(open(input), 4, 3, 0, 1), 1);
    let from_folder = batches(&folder);
    for input in [&shards, &zip, &list] {
        assert!(batches(input) == from_folder, "{}", input.display());
    }
}

#[test]
fn the_order_of_shards_is_fixed_by_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    make_images(&tmp.path().join("images"), IMAGES);
    let shards = tmp.path().join("shards");
    pack(&pack_options(&tmp.path().join("images"), &shards, 1)).unwrap();
    let order = |seed, rank, world| {
        let l = loader(open(&shards), 4, seed, rank, world);
        epoch(&l, 0).iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>()
    };
    assert_eq!(order(5, 0, 1), order(5, 0, 1));
    assert_ne!(order(5, 0, 1), order(6, 0, 1));
    assert_eq!(order(5, 1, 2), order(5, 1, 2));
    assert_ne!(order(5, 1, 2), order(6, 1, 2));
    // Later epochs are new permutations.
    let l = loader(open(&shards), 4, 5, 0, 1);
    let indices = |e| epoch(&l, e).iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
    assert_ne!(indices(0), indices(1));
}

/// Each rank's images of one epoch, as sorted indices, and the shards they
/// come from.
fn rank_share(input: &Path, rank: usize, world: usize) -> (Vec<usize>, Vec<PathBuf>) {
    let ds = open(input);
    let l = loader(ds.clone(), 4, 9, rank, world);
    let mut indices: Vec<usize> = epoch(&l, 2).iter().flat_map(|b| b.indices.clone()).collect();
    indices.sort();
    let mut files: Vec<PathBuf> =
        indices.iter().map(|&i| ds.path(i).parent().unwrap().to_path_buf()).collect();
    files.sort();
    files.dedup();
    (indices, files)
}

#[test]
fn two_ranks_share_an_epoch_disjointly_by_shard_or_by_sample() {
    let tmp = tempfile::tempdir().unwrap();
    make_images(&tmp.path().join("images"), IMAGES);
    // Twelve shards of one image each: split over the ranks by shard.
    let many = tmp.path().join("many");
    pack(&pack_options(&tmp.path().join("images"), &many, 1)).unwrap();
    // One shard for two ranks: split by sample.
    let one = tmp.path().join("one");
    pack(&pack_options(&tmp.path().join("images"), &one, 1 << 30)).unwrap();

    for (input, by_shard) in [(&many, true), (&one, false)] {
        let (a, shards_a) = rank_share(input, 0, 2);
        let (b, shards_b) = rank_share(input, 1, 2);
        assert_eq!(a.len(), IMAGES as usize / 2);
        assert!(a.iter().all(|i| !b.contains(i)), "{a:?} {b:?}");
        let mut all = [a, b].concat();
        all.sort();
        assert_eq!(all, (0..IMAGES as usize).collect::<Vec<_>>(), "the epoch is covered");
        if by_shard {
            assert!(shards_a.iter().all(|s| !shards_b.contains(s)), "{shards_a:?} {shards_b:?}");
        }
    }
}

#[test]
fn resuming_a_pretraining_on_shards_mid_epoch_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    make_images(&tmp.path().join("images"), IMAGES);
    let shards = tmp.path().join("shards");
    pack(&pack_options(&tmp.path().join("images"), &shards, 30_000)).unwrap();
    let cfg = Config::from_toml_str(TINY, &Config::default()).unwrap();

    let straight = tmp.path().join("straight");
    let s = pretrain(&cfg, &options(&shards, &straight, None)).unwrap();
    assert_eq!((s.steps_done, s.finished), (6, true));
    // Three batches of 4 per epoch: step 2 is in the middle of the first.
    let split = tmp.path().join("split");
    pretrain(&cfg, &options(&shards, &split, Some(2))).unwrap();
    let second = pretrain(&cfg, &options(&shards, &split, None)).unwrap();
    assert_eq!((second.steps_done, second.finished), (6, true));

    let a = tensors(&straight.join("checkpoints/last.safetensors"));
    let b = tensors(&split.join("checkpoints/last.safetensors"));
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the straight and the resumed run");
    }
    let early = tensors(&split.join("checkpoints/step-0000003.safetensors"));
    assert!(early.iter().zip(&a).any(|((_, t0), (_, t1))| !t0.equal(t1)), "weights moved");
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn pack_resumes_after_its_last_complete_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, IMAGES);
    let whole = tmp.path().join("whole");
    pack(&pack_options(&images, &whole, 20_000)).unwrap();
    let want = files_of(&whole);

    // A run killed while writing its last shard: the index already has that
    // shard's lines, the shard is still a temporary file.
    let cut = tmp.path().join("cut");
    let s = pack(&pack_options(&images, &cut, 20_000)).unwrap();
    assert!(s.shards >= 3, "{s:?}");
    let last = format!("shard-{:06}.tar", s.shards - 1);
    std::fs::rename(cut.join(&last), cut.join(format!("{last}.tmp"))).unwrap();
    let again = pack(&pack_options(&images, &cut, 20_000)).unwrap();
    assert_eq!((again.kept_shards, again.shards, again.images), (s.shards - 1, s.shards, 12));
    assert_eq!(files_of(&cut), want, "the same shards and index as one uninterrupted pack");
    // A finished pack is left as it is.
    assert_eq!(pack(&pack_options(&images, &cut, 20_000)).unwrap().kept_shards, s.shards);
    assert_eq!(files_of(&cut), want);
    // A shard removed from the middle is packed again with all after it.
    std::fs::remove_file(cut.join("shard-000001.tar")).unwrap();
    assert_eq!(pack(&pack_options(&images, &cut, 20_000)).unwrap().kept_shards, 1);
    assert_eq!(files_of(&cut), want);

    let msg = pack(&pack_options(&images, &cut, 10_000)).unwrap_err().to_string();
    assert!(msg.contains("other settings"), "{msg}");
    let msg = pack(&pack_options(&images, &images, 10_000)).unwrap_err().to_string();
    assert!(msg.contains("no pack (pack.json)"), "{msg}");
}

#[test]
fn pack_shrinks_large_images_once_and_indexes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, 4);
    let out = tmp.path().join("small");
    let s =
        pack(&PackOptions { max_side: Some(50), ..pack_options(&images, &out, 1 << 30) }).unwrap();
    // 64 to 88 pixels wide: all over 50.
    assert_eq!((s.images, s.resized), (4, 4));
    let ds = open(&out);
    for i in 0..ds.len() {
        let (w, h) = ds.load(i).unwrap().dimensions();
        assert_eq!(w.max(h), 50, "{}", ds.path(i).display());
        assert!(ds.path(i).extension().unwrap() == "jpg");
    }
    let index = std::fs::read_to_string(out.join("index.jsonl")).unwrap();
    assert_eq!(index.lines().count(), 4);
    let first: serde_json::Value = serde_json::from_str(index.lines().next().unwrap()).unwrap();
    assert_eq!(first["shard"], "shard-000000.tar");
    assert_eq!(first["member"], "00000000.jpg");
    assert_eq!(first["resized"], serde_json::json!([50, 38]));
    assert!(first["source"].as_str().unwrap().ends_with("img0.png"), "{first}");
}

#[test]
fn broken_shards_and_members_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, IMAGES);
    let shards = tmp.path().join("shards");
    pack(&pack_options(&images, &shards, 1)).unwrap();

    // An empty shard is named and the others are used.
    std::fs::write(shards.join("shard-empty.tar"), b"").unwrap();
    let (ds, report) = Dataset::open(&shards).unwrap();
    assert_eq!(ds.len(), IMAGES as usize);
    assert_eq!(report.empty, vec![shards.join("shard-empty.tar")]);
    std::fs::remove_file(shards.join("shard-empty.tar")).unwrap();

    // A member whose data is cut after the scan is replaced, and named.
    let victim = shards.join("shard-000003.tar");
    let bytes = std::fs::read(&victim).unwrap();
    let l = loader(open(&shards), 12, 0, 0, 1);
    std::fs::write(&victim, &bytes[..700]).unwrap();
    let batch = l.iter_from(0, 0).next().unwrap().unwrap();
    assert_eq!(batch.replaced.len(), 1, "{:?}", batch.replaced);
    assert!(batch.replaced[0].0.starts_with(&victim), "{:?}", batch.replaced);

    // A shard cut short is an error naming it and the member it breaks in.
    let msg = Dataset::open(&shards).unwrap_err().to_string();
    assert!(msg.contains("shard-000003.tar") && msg.contains("in member 00000003."), "{msg}");

    // A member that is not an image is named and left out.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("a.jpg", b"plain text".to_vec()),
        ("b.png", std::fs::read(images.join("group1/img1.jpg")).unwrap()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    std::fs::write(&victim, b.into_inner().unwrap()).unwrap();
    let (ds, report) = Dataset::open(&shards).unwrap();
    assert_eq!(ds.len(), IMAGES as usize);
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].0, victim.join("a.jpg"));
}

fn pixpro(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixpro")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "pixpro {args:?} panicked:\n{stderr}");
    (out.status.success(), stderr)
}

#[test]
fn cli_packs_then_continues_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, 6);
    let out = tmp.path().join("shards");
    let (from, to) = (images.to_str().unwrap(), out.to_str().unwrap());
    let (ok, err) =
        pixpro(&["data", "pack", "--from", from, "--out", to, "--shard-size", "20kB", "-q"]);
    assert!(ok, "{err}");
    assert!(err.contains("6 images in") && err.contains("index.jsonl"), "{err}");
    let (ok, err) =
        pixpro(&["data", "pack", "--from", from, "--out", to, "--shard-size", "20kB", "-q"]);
    assert!(ok && err.contains("kept from an earlier run"), "{err}");

    let (ok, err) = pixpro(&["data", "pack", "--from", from, "--out", to, "--shard-size", "lots"]);
    assert!(!ok && err.contains("lots"), "{err}");
    let zip = tmp.path().join("cut.zip");
    std::fs::write(&zip, b"PK\x03\x04 not much of an archive").unwrap();
    let (ok, err) = pixpro(&["data", "pack", "--from", zip.to_str().unwrap(), "--out", to]);
    assert!(!ok && err.contains("cut.zip") && err.contains("truncated"), "{err}");
}

/// Real photos of the Debian wallpaper packages (scripts/setup installs
/// them): one baseline, one progressive, a third with other sampling.
const PHOTOS: [&str; 3] = [
    "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
    "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
    "/usr/share/backgrounds/mate/nature/Dune.jpg",
];

/// The `.venv`'s PIL decodes `jpeg` at 1/`denom` (its `draft` mode), upright
/// (`exif_transpose`), to raw RGB in `out`; returns its width and height.
fn pil_decode(jpeg: &Path, denom: u32, out: &Path) -> (u32, u32) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = r#"
import sys
from PIL import Image, ImageOps
path, denom, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
im = Image.open(path)
if denom > 1:
    im.draft("RGB", (im.size[0] // denom, im.size[1] // denom))
im = ImageOps.exif_transpose(im.convert("RGB"))
open(out, "wb").write(im.tobytes())
print(im.size[0], im.size[1])
"#;
    let run = Command::new(python)
        .args(["-c", script])
        .arg(jpeg)
        .arg(denom.to_string())
        .arg(out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let size = String::from_utf8(run.stdout).unwrap();
    let mut it = size.split_whitespace().map(|v| v.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn jpegs_decode_to_the_pixels_pil_gives_whole_and_reduced() {
    let tmp = tempfile::tempdir().unwrap();
    // A grey JPEG and one a phone would write for a portrait photo (EXIF
    // orientation 6, "turn clockwise to display"), beside the real photos.
    let grey = tmp.path().join("grey.jpg");
    image::GrayImage::from_fn(77, 45, |x, y| image::Luma([(x * 3 + y * 5) as u8]))
        .save(&grey)
        .unwrap();
    let turned = tmp.path().join("turned.jpg");
    {
        use image::ImageEncoder;
        let img =
            image::RgbImage::from_fn(61, 35, |x, y| image::Rgb([(x * 4) as u8, (y * 7) as u8, 90]));
        let mut bytes = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92);
        enc.set_exif_metadata(vec![
            0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0,
            0,
        ])
        .unwrap();
        enc.write_image(img.as_raw(), 61, 35, image::ExtendedColorType::Rgb8).unwrap();
        std::fs::write(&turned, bytes).unwrap();
    }
    let mut files: Vec<PathBuf> = PHOTOS.iter().map(PathBuf::from).collect();
    files.extend([grey, turned]);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for denom in [1, 2, 4, 8] {
            let raw = tmp.path().join("pil.rgb");
            let (w, h) = pil_decode(file, denom, &raw);
            let (ours, _) =
                pixpro::data::dataset::Opened::new(&bytes).unwrap().decode(denom).unwrap();
            assert_eq!(ours.dimensions(), (w, h), "{} at 1/{denom}", file.display());
            let pil = std::fs::read(&raw).unwrap();
            let differ = ours.as_raw().iter().zip(&pil).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ,
                0,
                "{} at 1/{denom}: {differ} values differ from PIL's",
                file.display()
            );
        }
    }
}

/// Views of a 4 MP photo from reduced decodes against the same views from
/// the whole decode: the same crops and coordinates, pixels a few levels
/// apart (0.27 levels on average when written; docs/performance.md
/// measures it on more photos), and most views
/// do come from a reduced decode at this size.
#[test]
fn reduced_decodes_keep_the_crops_and_move_the_pixels_little() {
    use pixpro::data::dataset::Opened;
    use pixpro::data::views::{two_views_decoded, ViewParams};
    use rand::SeedableRng;
    let bytes = std::fs::read("/usr/share/backgrounds/mate/nature/Garden.jpg").unwrap();
    // Geometry only, so that the pixels are compared before any colour
    // operation magnifies a difference.
    let plain = ViewParams {
        jitter_p: 0.0,
        grayscale_p: 0.0,
        blur_p: 0.0,
        solarize_p: 0.0,
        ..ViewParams::view1()
    };
    let cfg =
        AugmentConfig { image_size: 224, view1: plain.clone(), view2: plain, reduced_decode: true };
    let whole = AugmentConfig { reduced_decode: false, ..cfg.clone() };
    let (mut reduced, mut total, mut n) = (0, 0.0, 0.0);
    for seed in 0..24u64 {
        let views = |cfg: &AugmentConfig, used: &mut u32| {
            let opened = Opened::new(&bytes).unwrap();
            let (w, h) = opened.dimensions();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            two_views_decoded(w, h, cfg, &mut rng, |d| {
                *used = d;
                opened.decode(d)
            })
            .unwrap()
        };
        let (mut d, mut one) = (0, 0);
        let (a1, a2) = views(&cfg, &mut d);
        let (b1, b2) = views(&whole, &mut one);
        assert_eq!(one, 1);
        reduced += usize::from(d > 1);
        for (a, b) in [(a1, b1), (a2, b2)] {
            assert_eq!(a.coords, b.coords);
            for (x, y) in a.pixels.iter().zip(&b.pixels) {
                // Normalised units back to 0-255 levels (std about 0.226).
                total += f64::from((x - y).abs()) * 0.226 * 255.0;
                n += 1.0;
            }
        }
    }
    assert!(reduced >= 12, "only {reduced} of 24 pairs were decoded reduced");
    let mean = total / n;
    assert!(mean < 1.0, "views moved by {mean:.2} levels on average");
}
