//! The properties the fuzz targets check, as plain functions so that the
//! stable test suite (`tests/robust.rs`) runs the same checks over the seed
//! corpus and mutations of it. Each returns quietly or panics, which is how a
//! fuzzer is told that it found something.
use pixpro::data::dataset::{decode_rgb, Opened, MAX_MEGAPIXELS};
use pixpro::train::config::{Config, Preset};

/// Any bytes given to the loader's decoder: an error, or an RGB8 image of
/// the upright size its header promised (the size both views' crops are
/// drawn on before decoding), never empty and never over the pixel limit;
/// and at every reduction, the promised size divided and rounded up (the
/// pixels the crops' placement assumes), or the whole image if it is not a
/// JPEG libjpeg decodes.
pub fn check_image(bytes: &[u8]) {
    let Ok(img) = decode_rgb(bytes) else { return };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0, "decoded an empty {w} x {h} image");
    assert!(
        u64::from(w) * u64::from(h) <= MAX_MEGAPIXELS * 1_000_000,
        "decoded {w} x {h}, over the {MAX_MEGAPIXELS} MP limit"
    );
    assert_eq!(img.as_raw().len(), w as usize * h as usize * 3, "buffer does not fit {w} x {h}");
    let promised = Opened::new(bytes)
        .unwrap_or_else(|e| panic!("decoded, yet the header alone cannot be read: {e}"))
        .dimensions();
    assert_eq!((w, h), promised, "decoded size differs from the header's");
    for d in [2, 4, 8] {
        let Ok((small, at)) = Opened::new(bytes).and_then(|o| o.decode(d)) else { continue };
        let want = if at.scale == 1.0 { (w, h) } else { (w.div_ceil(d), h.div_ceil(d)) };
        assert_eq!(small.dimensions(), want, "size at 1/{d}");
    }
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
