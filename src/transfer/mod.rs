//! Stage 7, transfer: what a pretrained backbone is for, measured and
//! carried out.
//!
//! - [`backbone`]: the frozen encoder out of a checkpoint (or random init,
//!   the baseline).
//! - [`voc`]: the Pascal VOC segmentation layout evaluations read.
//! - [`probe`]: the dense linear probe (mIoU on a VOC-layout set).
//! - [`finetune`]: the whole backbone fine-tuned with an FCN head (the
//!   paper's transfer protocol, scaled down), scored as the probe is.
//! - [`export`]: torchvision and Detectron2 weight files, dense features.
pub mod backbone;
pub mod voc;
pub mod probe;
pub mod finetune;
pub mod export;
