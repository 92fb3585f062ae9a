//! The frame path: frames, bounded hops, the inference worker, per-pipeline supervision and
//! the engine that runs them all. Everything here runs on OS threads.

pub mod channel;
pub mod engine;
pub mod frame;
pub mod inference;
pub mod metadata;
pub mod stats;
pub mod supervisor;
pub mod worker;
