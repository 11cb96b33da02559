//! Stage 2, model: the networks, from a batch of views to per-cell features.
//!
//! - [`resnet`]: the ResNet-18/34/50 encoder (torchvision names), C5 map out.
//! - [`heads`]: the per-pixel projector (1x1-conv MLPs), and the per-cell
//!   normalisation everything downstream reads its output through.
//! - [`ppm`]: the Pixel Propagation Module on the online side.
//! - [`instance`]: the BYOL-style instance branch (heads and loss).
//! - [`precision`]: bf16 autocast for the encoders' and projectors' forward
//!   passes.
pub mod resnet;
pub mod heads;
pub mod ppm;
pub mod instance;
pub mod precision;
