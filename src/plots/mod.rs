//! Pictures from numbers: training curves, confusion matrices and
//! segmentation overlays as PNG files, plus the small raster toolkit (lines,
//! boxes, discs, text) that the [`crate::tools::inspect`] pictures share.
//! Beside the stages: it imports none of them, so that training, transfer
//! and the tools can all draw.
//!
//! Everything is drawn straight into an [`RgbImage`]. Text uses DejaVu Sans,
//! read at run time and rasterised by the pure-Rust `ab_glyph` (no
//! fontconfig or freetype); where that file is missing the pictures are still
//! drawn, only without their text.
//!
//! - [`canvas`]: the drawing primitives and text.
//! - [`charts`]: training curves, bar charts, curves with seed bands (on a
//!   log axis too).
//! - [`segmentation`]: confusion matrices, palettes, prediction overlays.
pub mod canvas;
pub mod charts;
pub mod segmentation;

pub use canvas::FONT_PATH;
pub(crate) use canvas::{
    blend, disc, fill, mix, paste, rect, save_png, segment, text, BLACK, WHITE,
};
pub use charts::{
    plot_band_panels, plot_bands, plot_bars, plot_training, Band, BandPanel, Bar, BarPanel, XAxis,
};
pub use segmentation::{overlay_prediction, plot_confusion, voc_palette, IGNORE_GREY};
