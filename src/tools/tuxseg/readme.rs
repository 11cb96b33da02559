//! The README.md of a build: what the data set is, its layout, the classes with their counts, the
//! photo test for stamps, and the source and licence of every file it was made from.
use std::path::PathBuf;

use super::photos::photo_source;
use super::stamps::{MAX_FLAT, MIN_COLOURS, MIN_OPAQUE, NOT_OBJECTS, STAMP_PACKAGE};
use super::{TuxsegOptions, TuxsegSummary, CLASSES};

/// Markdown written a line at a time.
#[derive(Default)]
struct Md(String);

impl Md {
    fn line(&mut self, l: impl AsRef<str>) {
        self.0.push_str(l.as_ref());
        self.0.push('\n');
    }
}

pub(super) fn readme(
    opts: &TuxsegOptions,
    s: &TuxsegSummary,
    pretrain_photos: &[PathBuf],
    heldout_photos: &[PathBuf],
) -> String {
    let mut md = Md::default();
    intro(&mut md, opts, s);
    layout(&mut md, s);
    classes(&mut md, s);
    photo_test(&mut md);
    sources(&mut md, opts, pretrain_photos, heldout_photos);
    md.0
}

fn intro(md: &mut Md, opts: &TuxsegOptions, s: &TuxsegSummary) {
    md.line("# tuxseg: cut-and-paste segmentation on real photos");
    md.line("");
    md.line(
        "This is real photos with pasted real-object cutouts, not a natural-scene benchmark: \
         crops of Debian wallpaper photographs with Tux Paint photo stamps alpha-blended on top. \
         Built by `pixpro::tools::tuxseg::build` as described in shared/docs/data.md.",
    );
    md.line("");
    let total_a: usize = s.stamps_a.iter().sum();
    let total_b: usize = s.stamps_b.iter().sum();
    md.line(format!(
        "Seed {}, scenes {}x{} px. Sources: {} photos ({} pretraining, {} held out) and {} \
         photo stamps ({} in A, {} in B).",
        opts.seed,
        opts.image_size,
        opts.image_size,
        s.pretrain_photos + s.heldout_photos,
        s.pretrain_photos,
        s.heldout_photos,
        total_a + total_b,
        total_a,
        total_b
    ));
    md.line("");
}

fn layout(md: &mut Md, s: &TuxsegSummary) {
    md.line("## Layout");
    md.line("");
    md.line(format!(
        "- `pretrain/*.jpg`: {} crops of pretraining photos with 0-3 A stamps; no labels.",
        s.pretrain_images
    ));
    md.line(format!(
        "- `voc/`: Pascal VOC 2012 segmentation layout. `train` ({} scenes): held-out photos \
         with 1-3 A stamps; `val` ({} scenes): held-out photos with 1-3 B stamps. \
         `SegmentationClass/*.png` hold class indices (see `classes.txt`), 255 = ignore: the \
         1-px ring just outside each object's alpha >= 128 mask; later objects occlude earlier.",
        s.train_images, s.val_images
    ));
    md.line(
        "- `manifest.json`: which photos and stamp identities are in which split, the rejected \
         stamps with the reason, and every scene's photo crop and pasted objects.",
    );
    md.line("");
    md.line("No val object and no val background pixel is seen in pretraining.");
    md.line("");
}

fn classes(md: &mut Md, s: &TuxsegSummary) {
    md.line("## Classes and objects");
    md.line("");
    md.line(
        "| index | class | stamps A | stamps B | objects pretrain | objects train | objects val |",
    );
    md.line("| --- | --- | --- | --- | --- | --- | --- |");
    for (i, class) in CLASSES.iter().enumerate().skip(1) {
        md.line(format!(
            "| {i} | {class} | {} | {} | {} | {} | {} |",
            s.stamps_a[i],
            s.stamps_b[i],
            s.objects_pretrain[i],
            s.objects_train[i],
            s.objects_val[i]
        ));
    }
    md.line("");
    md.line(
        "Stamp folders per class: mammal = animals/mammals, animals/marsupials; bird = \
         animals/birds; other_animal = animals/{fish,shellfish,insects,amphibians,lizards}; food \
         = food; plant = plants; object = household, hobbies, medical, sports; vehicle = \
         vehicles, military/vehicles.",
    );
    md.line("");
}

fn photo_test(md: &mut Md) {
    md.line(format!(
        "A stamp counts as a photo cutout when it is not a `*_mirror` duplicate, not under a \
         `cartoon` folder, has no `.svg` twin, is not marked colorable/tintable in its `.dat`, \
         is not a decal ({NOT_OBJECTS:?}), is an RGB image with alpha, and its opaque (alpha >= 128) pixels number at least \
         {MIN_OPAQUE}, hold at least {MIN_COLOURS} distinct colours at 5 bits per channel, and at \
         most {:.0}% of horizontally adjacent opaque pairs are exactly equal (flat fills).",
        MAX_FLAT * 100.0
    ));
    md.line("");
}

fn sources(md: &mut Md, opts: &TuxsegOptions, pretrain: &[PathBuf], heldout: &[PathBuf]) {
    md.line("## Sources and licences");
    md.line("");
    md.line(format!(
        "Stamps: Debian package `{STAMP_PACKAGE}`, GPL-2, from `{}`; the identities are listed \
         in manifest.json.",
        opts.stamp_root.display()
    ));
    md.line("");
    md.line("| split | photo | package | licence |");
    md.line("| --- | --- | --- | --- |");
    for (split, paths) in [("pretrain", pretrain), ("held-out", heldout)] {
        for path in paths {
            let (package, licence) = photo_source(path);
            md.line(format!("| {split} | `{}` | {package} | {licence} |", path.display()));
        }
    }
}
