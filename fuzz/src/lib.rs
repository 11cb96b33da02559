//! The properties the fuzz targets check, as plain functions so that the
//! stable test suite (`tests/robust.rs`) runs the same checks over the seed
//! corpus and mutations of it. Each returns quietly or panics, which is how a
//! fuzzer is told that it found something.
use std::io::Cursor;

use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use pixpro::data::dataset::{decode_rgb, MAX_MEGAPIXELS};
use pixpro::train::config::{Config, Preset};

/// Any bytes given to the loader's decoder: an error, or an RGB8 image of
/// the size its header claims (turned as its EXIF orientation says), never
/// empty and never over the pixel limit.
pub fn check_image(bytes: &[u8]) {
    let Ok(img) = decode_rgb(bytes) else { return };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0, "decoded an empty {w} x {h} image");
    assert!(
        u64::from(w) * u64::from(h) <= MAX_MEGAPIXELS * 1_000_000,
        "decoded {w} x {h}, over the {MAX_MEGAPIXELS} MP limit"
    );
    assert_eq!(img.as_raw().len(), w as usize * h as usize * 3, "buffer does not fit {w} x {h}");

    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .and_then(|r| r.into_decoder().map_err(std::io::Error::other))
        .unwrap_or_else(|e| panic!("decoded, yet the header alone cannot be read: {e}"));
    let (stored_w, stored_h) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let claimed = if turned { (stored_h, stored_w) } else { (stored_w, stored_h) };
    assert_eq!(
        (w, h),
        claimed,
        "decoded size differs from the header's (stored {stored_w} x {stored_h}, turned: {turned})"
    );
}

/// Any text given as a config file: an error, or a config that, when it
/// validates, is saved by `to_toml` in a form that reads back equal and
/// valid whatever the base it is read over (a resumed run reads the saved
/// `config.toml` over the defaults and must get the same recipe).
pub fn check_config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    // The two bases the command line starts from (`--preset`).
    for base in [Preset::PaperR50.config(), Preset::Cpu.config()] {
        let Ok(cfg) = Config::from_toml_str(text, &base) else { continue };
        if cfg.validate().is_err() {
            continue;
        }
        let saved = cfg.to_toml();
        for reader_base in [Config::default(), Preset::Cpu.config()] {
            let back = Config::from_toml_str(&saved, &reader_base)
                .unwrap_or_else(|e| panic!("saved config does not read back: {e}\n{saved}"));
            assert_eq!(back, cfg, "saved config reads back different:\n{saved}");
            if let Err(e) = back.validate() {
                panic!("saved config reads back invalid: {e}\n{saved}");
            }
        }
    }
}
