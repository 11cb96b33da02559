//! Stage 1, data: files in, batches of view pairs with their coordinates out.
//!
//! - [`dataset`]: find the images of a folder, check them up front, decode one.
//! - [`views`]: two augmented crops of one image, each with its crop box in
//!   the source image (what matching needs later), and the random draws of
//!   their augmentation.
//! - [`photometric`]: the pixel operations those draws choose: colour jitter,
//!   grayscale, blur, solarize, normalisation.
//! - [`loader`]: background threads that turn the data set into
//!   deterministic, resumable batches, sharded over ranks.
pub mod dataset;
pub mod views;
pub mod photometric;
pub mod loader;
