//! Configuration: one daemon file plus one file per pipeline, as typed data.
//!
//! [`Config::read`] parses every file into its types and checks their shape (ranges, names,
//! references, uniqueness), collecting every error with its file and key path. This module is
//! pure data: it reads the configuration files and nothing else of the machine. Whether the
//! machine can run what the files describe (model folders, the Hugging Face cache, GStreamer
//! elements, writable directories, CUDA) is checked by `crate::preflight`.

mod broker;
mod daemon;
mod error;
mod limits;
mod load;
mod model;
pub mod paths;
mod pipeline;
mod reader;
pub mod redact;
mod remote;
mod shape;
mod source;
pub mod template;
mod tree;

pub use broker::*;
pub use daemon::*;
pub use error::{ConfigError, ConfigErrors, FileErrors};
pub use limits::{MAX_NAME, shown};
pub use load::Overlay;
pub use model::*;
pub use pipeline::*;
pub use remote::*;
pub use shape::is_env_name;
pub use source::*;
pub use tree::{Config, PipelineFile, Reading};
