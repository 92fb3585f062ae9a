//! `visiond bench`: how fast visiond runs, measured the way a user would check it.
//!
//! One subcommand with one mode per question, chosen by the flag that names what is measured
//! (an [`clap::ArgGroup`], so exactly one is given):
//!
//! - `--model DIR|HUB_ID` ([`model`]): the model's forward alone, per dtype and batch size,
//!   warm-up first, then timed with device synchronisation (ms per batch p50/p90, images/s,
//!   GFLOP/s). `tools/hf_bench.py` prints the same lines for transformers eager.
//! - `--streams N` ([`streams`]): N synthetic streams through the whole frame path (source,
//!   model or `none`, output): per-stream and total frames/s, drops, latency, CPU, memory.
//!
//! With `--json` every result is JSON (one object per line for `--model`, one object for
//! `--streams`); otherwise a table for people.

pub mod model;
pub mod streams;

use std::io::Write;
use std::path::PathBuf;

use crate::config::{DType, DeviceSpec};
use crate::models::ModelError;

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).multiple(true).args(["model", "streams"])))]
pub struct BenchArgs {
    /// Time this model's forward: a folder (config.json + model.safetensors, or model.pt) or a
    /// Hugging Face hub id. With --streams: the streams' model, a folder or `none` (the frame
    /// path's own cost) [default: none].
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// Run N synthetic streams through the whole frame path instead of timing the model alone.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub streams: Option<u32>,
    #[command(flatten)]
    pub stream: streams::StreamOptions,
    /// Hub revision: branch, tag, refs/pr/N or commit hash [default: main].
    #[arg(long, value_name = "REVISION", requires = "model")]
    pub revision: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
    /// Precisions to time, comma-separated: f32, f16, bf16 (--streams: one).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f32",
        value_name = "DTYPE,..."
    )]
    pub dtype: Vec<DType>,
    /// Batch sizes to time, comma-separated [default: 1,8,32]; --streams: the largest batch the
    /// model's worker gathers [default: 8].
    #[arg(long, value_delimiter = ',', value_name = "N,...",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: Vec<u32>,
    /// Input size HxW [default: what the model's image processor makes of a square frame].
    #[arg(long, value_name = "HxW", value_parser = parse_size, conflicts_with = "streams")]
    pub size: Option<[i64; 2]>,
    /// Timed batches per batch size (after the warm-up).
    #[arg(long, default_value_t = 20, value_name = "N", conflicts_with = "streams",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Untimed batches first (on CUDA these include capturing the graph).
    #[arg(
        long,
        default_value_t = 3,
        value_name = "N",
        conflicts_with = "streams"
    )]
    pub warmup: u32,
    /// Run forwards eagerly; by default a CUDA device replays them from CUDA graphs.
    #[arg(long, conflicts_with = "streams")]
    pub eager: bool,
    /// f32 on CUDA: let matrix products and convolutions use TF32 (the config's `allow_tf32`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_tf32: bool,
    /// CPU threads for libtorch's operators [default: libtorch's, one per core].
    #[arg(long, value_name = "N", conflicts_with = "streams",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// One JSON object per result line.
    #[arg(long)]
    pub json: bool,
    /// Write a Chrome trace (chrome://tracing, Perfetto) of one timed batch of the first dtype
    /// and the largest batch size: operators, and on CUDA the GPU's kernels. With --streams:
    /// one second of the measured window, on CUDA every kernel and copy of the whole process
    /// (where the GPU's time goes between the model and the frame path).
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<[i64; 2], String> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(h, w)| Some([h.trim().parse::<i64>().ok()?, w.trim().parse::<i64>().ok()?]));
    match parsed {
        Some([h, w]) if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(format!(
            "'{text}' is not HxW with two positive whole numbers (e.g. 384x384)"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Something the person passed is wrong: a flag, the model, the input size.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A failure while running that the flags cannot fix.
    #[error("{0}")]
    Runtime(String),
}

impl BenchError {
    /// 2 for bad input, 1 for failures at run time (as `visiond infer`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input(_) => 2,
            Self::Runtime(_) | Self::Model(ModelError::Torch(_)) => 1,
            Self::Model(_) => 2,
        }
    }
}

/// Runs the mode the arguments name, writing results to `out`.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<(), BenchError> {
    if let Some(trace) = &args.trace {
        let parent = trace.parent().filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.is_dir()) {
            return Err(BenchError::Input(format!(
                "--trace {}: folder does not exist",
                trace.display()
            )));
        }
    }
    if let Some(count) = args.streams {
        return streams::run_from(count, args, out);
    }
    match &args.model {
        Some(model) => model::run(model, args, out),
        // clap's ArgGroup makes one mode required; this is for library callers.
        None => Err(BenchError::Input(
            "say what to time: --model DIR|HUB_ID, or --streams N".to_owned(),
        )),
    }
}

/// The batch sizes asked for, or `default` when none was.
pub fn batches_or(args: &BenchArgs, default: &[u32]) -> Vec<u32> {
    if args.batch.is_empty() {
        default.to_vec()
    } else {
        args.batch.clone()
    }
}

/// The p-th percentile (0–100) of sorted values, by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_height_by_width() {
        assert_eq!(parse_size("384x512"), Ok([384, 512]));
        assert_eq!(parse_size("64X64"), Ok([64, 64]));
        for bad in ["384", "0x10", "ax3", "-4x4", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 5.0);
        assert_eq!(percentile(&values, 90.0), 9.0);
        assert_eq!(percentile(&values, 100.0), 10.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
