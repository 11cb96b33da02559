//! The background photos: the packaged wallpapers (or the user's own files), found and decoded
//! once at a working size.
use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

use super::missing_sources;
use crate::{Error, Result};

/// The 37 packaged photographs: (path, Debian package, licence from the package's copyright
/// file). Left out after looking at every file: the rendered or abstract lomiri images
/// Fossa_by_Jasper_Roks, Infinite-Sea_by_Aury88, Painting-Colors_by__herobrine7gamer (20.04) and
/// analogpattern_by_Peter_Nerlich, umang_by_Abhishek_Mudgal (16.04).
pub(super) const PACKAGED_PHOTOS: &[(&str, &str, &str)] = &[
    ("/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/Dragonfly_by_Bolly.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/Picture_0B_by_freespace.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Picture_1A_by_freespace.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/free_by_Peter_Nerlich.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg", L16, "CC0-1.0"),
    ("/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg", L20, "CC-BY-SA-3.0"),
    ("/usr/share/backgrounds/mate/nature/Aqua.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Blinds.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Dune.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/FreshFlower.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Garden.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/GreenMeadow.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/LadyBird.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/RainDrops.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Storm.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/TwoWings.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Wood.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/YellowFlower.jpg", MATE, "GPL-2+"),
    ("/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Path/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
];
const L16: &str = "lomiri-wallpapers-16.04";
const L20: &str = "lomiri-wallpapers-20.04";
const MATE: &str = "mate-backgrounds";
const PLASMA: &str = "plasma-workspace-wallpapers";
const PLASMA_LICENCE: &str = "GPL-2+ (Debian copyright; the file's metadata.json says LGPLv3)";

/// Fewer photos than this cannot give both a pretraining and a held-out split.
const MIN_PHOTOS: usize = 4;

/// Photo files named by `roots` (files as they are, folders by their image files), sorted.
pub(super) fn find_photos(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for root in roots {
        if root.is_file() {
            found.push(root.clone());
        } else if root.is_dir() {
            let entries = fs::read_dir(root).map_err(|e| Error::io(root, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(root, e))?.path();
                let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if path.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    found.dedup();
    if found.len() < MIN_PHOTOS {
        let first = roots.first().cloned().unwrap_or_default();
        return Err(missing_sources(
            &first,
            format!(
                "found {} background photos in {} photo roots, need at least {MIN_PHOTOS}",
                found.len(),
                roots.len()
            ),
        ));
    }
    Ok(found)
}

pub(super) fn load_photos(paths: &[PathBuf], work_side: u32) -> Result<Vec<RgbImage>> {
    paths
        .par_iter()
        .map(|path| {
            let img = image::ImageReader::open(path)
                .map_err(|e| Error::io(path, e))?
                .with_guessed_format()
                .map_err(|e| Error::io(path, e))?
                .decode()
                .map_err(|e| Error::Image { path: path.clone(), reason: e.to_string() })?;
            let (w, h) = (img.width(), img.height());
            let short = w.min(h);
            let img = if short > work_side {
                let s = work_side as f64 / short as f64;
                let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
                img.resize_exact(nw.max(work_side), nh.max(work_side), FilterType::Triangle)
            } else {
                img
            };
            Ok(DynamicImage::to_rgb8(&img))
        })
        .collect()
}

/// (package, licence) of a photo for the README; a user's own photo has neither.
pub(super) fn photo_source(path: &Path) -> (&'static str, &'static str) {
    PACKAGED_PHOTOS
        .iter()
        .find(|(p, _, _)| Path::new(p) == path)
        .map(|&(_, package, licence)| (package, licence))
        .unwrap_or(("(not a packaged photo)", "unknown: check the file's own terms"))
}
