//! The building blocks every architecture is made of: layers with their parameter names, the
//! weights they are read from (checked for presence and shape), and typed `config.json` reading.

pub mod hf_config;
pub mod layers;
pub mod weights;
