//! Times pixpro's JPEG decoder (libjpeg-turbo, `pixpro::data::jpeg`)
//! against the pure-Rust one it replaced (zune-jpeg, through the `image`
//! crate) on the same files in the same run: whole decodes to RGB8, one
//! thread, the files read into memory first so that only decoding is timed.
//! Prints milliseconds per image for each and the ratio, per round.
//!
//! `cargo run --release --example jpeg_decoders -- DIR [ROUNDS]` (ROUNDS
//! defaults to 3; DIR's `.jpg`/`.jpeg` files, sorted, at most 500).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use image::ImageFormat;
use pixpro::data::jpeg;

const MAX_FILES: usize = 500;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        bail!("usage: jpeg_decoders DIR [ROUNDS]");
    };
    let rounds: usize = match args.next() {
        Some(r) => r.parse().with_context(|| format!("ROUNDS must be a number, not {r:?}"))?,
        None => 3,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
    });
    paths.sort();
    paths.truncate(MAX_FILES);
    if paths.is_empty() {
        bail!("{} has no .jpg or .jpeg files", dir.display());
    }
    let files: Vec<(PathBuf, Vec<u8>)> = paths
        .into_iter()
        .map(|p| std::fs::read(&p).map(|b| (p.clone(), b)).with_context(|| p.display().to_string()))
        .collect::<anyhow::Result<_>>()?;
    let (w, h) = jpeg::size(&files[0].1, 1)
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("{}: not an RGB JPEG", files[0].0.display()))?;
    println!(
        "{} JPEGs from {} (the first {w}x{h}), whole decodes, 1 thread",
        files.len(),
        dir.display()
    );

    let libjpeg = |bytes: &[u8]| -> Result<(u32, u32), String> {
        let img = jpeg::decode(bytes, 1, |_, _| Ok(()))?.ok_or("CMYK JPEG")?;
        Ok(img.dimensions())
    };
    let zune = |bytes: &[u8]| -> Result<(u32, u32), String> {
        let img = image::load_from_memory_with_format(bytes, ImageFormat::Jpeg)
            .map_err(|e| e.to_string())?;
        Ok((img.width(), img.height()))
    };
    for round in 1..=rounds {
        let mut ms = [0.0f64; 2];
        for (slot, decode) in [&libjpeg as &dyn Fn(&[u8]) -> _, &zune].into_iter().enumerate() {
            let t0 = Instant::now();
            for (path, bytes) in &files {
                let (dw, dh) =
                    decode(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                std::hint::black_box((dw, dh));
            }
            ms[slot] = 1e3 * t0.elapsed().as_secs_f64() / files.len() as f64;
        }
        println!(
            "round {round}: libjpeg-turbo {:.2} ms/image, zune-jpeg {:.2} ms/image: libjpeg-turbo {:.2}x as fast",
            ms[0],
            ms[1],
            ms[1] / ms[0]
        );
    }
    Ok(())
}
