//! Stage 1, data: files in, batches of view pairs with their coordinates out.
//!
//! - [`sources`]: which kind of input `--data` names: a folder tree, tar
//!   shards, a zip archive or a list of files.
//! - [`dataset`]: the images of any input, numbered once in a fixed order,
//!   checked up front, decoded one at a time.
//! - [`shards`]: WebDataset-style tar shards, indexed by one pass over their
//!   headers, then read member by member.
//! - [`archive`]: a zip archive of an image tree, read member by member.
//! - [`jpeg`]: JPEG decoding by libjpeg-turbo, as PIL decodes them, whole
//!   or at 1/2, 1/4, 1/8 of the size where the crops allow.
//! - [`views`]: two augmented crops of one image, each with its crop box in
//!   the source image (what matching needs later), and the random draws of
//!   their augmentation.
//! - [`photometric`]: the pixel operations those draws choose: colour jitter,
//!   grayscale, blur, solarize, normalisation.
//! - [`loader`]: background threads that turn the data set into
//!   deterministic, resumable batches, sharded over ranks.
pub mod sources;
pub mod dataset;
pub mod shards;
pub mod archive;
pub mod jpeg;
pub mod views;
pub mod photometric;
pub mod loader;

/// Small encoded images for the readers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::Cursor;

    use image::{Rgb, RgbImage};

    /// A `width` x 5 PNG of one colour.
    pub(crate) fn png(width: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        RgbImage::from_pixel(width, 5, Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .expect("a PNG encodes into memory");
        bytes
    }
}
