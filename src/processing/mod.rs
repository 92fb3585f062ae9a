//! Pre- and post-processing on the inference device.
//!
//! [`yuv420_to_rgb`] converts the NV12 / I420 frames decoders make into RGB exactly as
//! GStreamer's `videoconvert` would, and [`rgb_to_i420`] makes what the encoder takes.
//! [`Preprocessor`] turns uint8 RGB frames into the `pixel_values` the checkpoint's Hugging Face
//! image processor would make (the transformers 5.17 PIL classes are the reference: every value
//! within one uint8 step, i.e. 1/255/std). [`Annotator`] turns a model output into an annotated
//! frame (depth colour map, segmentation palette, or the frame itself for classification) and
//! per-frame results for the metadata, a whole batch at a
//! time ([`annotate_batch`]), leaving the results on the device for the output thread to copy.
//! All of it works on the tensors' own device, so a frame crosses to the device once and back once.

mod colormap;
mod colormap_tables;
mod colour;
pub mod config;
mod postprocess;
mod preprocess;

use std::path::PathBuf;

pub use colormap::{ADE20K, colormap_table, palette};
pub use colour::{
    Yuv420, rgb_to_i420, rgb_to_yuv_coefficients, yuv_to_rgb_coefficients, yuv420_to_rgb,
};
pub use config::{ProcessorConfig, Resample, ResizeRule};
pub use postprocess::{
    Annotated, AnnotatedOnDevice, Annotator, BatchItem, DeviceResults, EMA_WEIGHT, annotate_batch,
    depth16_to_vec, resize_depth, segmentation_labels, segmentation_labels_with_budget,
};
pub use preprocess::{Preprocessor, resize_like_pil};

#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    #[error("{}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: {key}: {reason}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "{}: no {} and no built-in processor for architecture '{architecture}' \
         (built in: {}); add the checkpoint's {}",
        dir.display(), config::FILE_NAME, config::DEFAULT_ARCHITECTURES, config::FILE_NAME
    )]
    NoProcessor { dir: PathBuf, architecture: String },
    #[error("input_size [{height}, {width}]: {reason}")]
    SizeOverride {
        height: u32,
        width: u32,
        reason: String,
    },
    #[error("frame {index}: {reason}")]
    Frame { index: usize, reason: String },
    #[error("batch: {0}")]
    Batch(String),
    #[error("model output: {0}")]
    Output(String),
    #[error("{0}")]
    Torch(#[from] tch::TchError),
}
