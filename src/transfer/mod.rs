//! Stage 7, transfer: what a pretrained backbone is for, measured and
//! carried out.
//!
//! - [`pickle`]: Python's pickle format, read as data.
//! - [`weights`]: ResNet weights from files pixpro did not write
//!   (torchvision safetensors, `torch.save`, Detectron2 pickles).
//! - [`backbone`]: the frozen encoder out of a checkpoint, a weight file, or
//!   random init (the baseline).
//! - [`voc`]: the Pascal VOC segmentation layout evaluations read.
//! - [`holdout`]: a held-out part of a train split as a VOC folder of its
//!   own, to choose recipes on without looking at val.
//! - [`probe`]: the dense linear probe (mIoU on a VOC-layout set).
//! - [`retrieval`]: dense nearest-neighbour retrieval (mIoU with nothing
//!   trained, Hummingbird's evaluation).
//! - [`correspondence`]: how often a cell's nearest neighbour in another
//!   view is its true partner (what PixPro optimises, on held-out images).
//! - [`finetune`]: the whole backbone fine-tuned with an FCN head (the
//!   paper's transfer protocol, scaled down), scored as the probe is.
//! - [`evaluate`]: every protocol behind one call and one report shape.
//! - [`export`]: torchvision and Detectron2 weight files, dense features.
pub mod pickle;
pub mod weights;
pub mod backbone;
pub mod voc;
pub mod holdout;
pub mod probe;
pub mod retrieval;
pub mod correspondence;
pub mod finetune;
pub mod evaluate;
pub mod export;
