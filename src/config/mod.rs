//! Configuration: one daemon file plus one file per pipeline.
//!
//! [`Config::load`] reads and validates everything and returns either a usable config or
//! every error found, each naming its file and key path.

mod error;
mod load;
pub mod paths;
mod reader;
pub mod schema;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use load::{Config, PipelineFile};
pub use schema::*;
