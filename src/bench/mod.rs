//! `visiond bench`: measurements a person runs on their own box.
//!
//! - [`streams`]: N synthetic streams through the whole frame path (source, model, output),
//!   per-stream and total frames/s, drops, latency, CPU, memory.

pub mod streams;
