//! `visiond bench --model`: a model's forward alone, timed per dtype and batch size.
//!
//! For each dtype the model is loaded once, on the device asked for, and runs through the
//! daemon's own [`ModelRunner`] (CUDA graphs on CUDA unless `--eager`). For each batch size:
//! random `pixel_values` on the device, `--warmup` untimed batches, then `--iters` batches each
//! timed from the call to the device being idle again. FLOPs are counted once per dtype on a
//! batch of one (matrix products, convolutions, attention; 2 per multiply-add).

use std::io::Write;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{BenchArgs, BenchError, percentile};
use crate::models::checkpoint::{self, LoadOptions, LoadedModel, ModelInfo};
use crate::models::device::torch_kind;
use crate::runtime::native::{FlopCounter, Trace};
use crate::runtime::{Execution, ModelRunner, apply_tf32, tensors};

/// A square frame's side, fed to the image processor to find the default input size.
const DEFAULT_FRAME_SIDE: i64 = 1024;

/// One (dtype, batch size) result; `tools/hf_bench.py` writes the same keys.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub tool: &'static str,
    pub model: String,
    pub architecture: String,
    pub device: String,
    pub dtype: String,
    pub batch: u32,
    pub height: i64,
    pub width: i64,
    pub iters: u32,
    pub ms_p50: f64,
    pub ms_p90: f64,
    pub img_per_s: f64,
    /// `None` where nothing countable ran (a TorchScript module counts too).
    pub gflop_per_img: Option<f64>,
    pub gflop_per_s: Option<f64>,
    pub cuda_graphs: bool,
    pub threads: i32,
}

pub fn run(spec: &str, args: &BenchArgs, out: &mut dyn Write) -> Result<(), BenchError> {
    let source = checkpoint::source_from_spec(spec, args.revision.as_deref())
        .map_err(|e| BenchError::Input(format!("--model {e}")))?;
    let mut batches = super::batches_or(args, &[1, 8, 32]);
    batches.sort_unstable();
    batches.dedup();
    let write_err = |e: std::io::Error| BenchError::Runtime(format!("writing results: {e}"));
    if !args.json {
        writeln!(
            out,
            "{:<28} {:<7} {:<5} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9}  graphs",
            "model", "device", "dtype", "batch", "input", "ms p50", "ms p90", "img/s", "GFLOP/s"
        )
        .map_err(write_err)?;
    }
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads as i32);
    }
    for (index, &dtype) in args.dtype.iter().enumerate() {
        let options = LoadOptions {
            device: args.device,
            dtype,
            ..LoadOptions::default()
        };
        let LoadedModel { model, info } = checkpoint::open(&source, &options)?;
        apply_tf32(&info.name, info.device, dtype, args.allow_tf32);
        let [height, width] = input_size(&info, args.size)?;
        let execution = if args.eager {
            Execution::Eager
        } else {
            Execution::for_device(&info.name, info.device, true)
        };
        let mut runner = ModelRunner::for_model(model, &info, execution);
        let flops = count_flops(&runner, &info, height, width)?;
        for &batch in &batches {
            let trace = (index == 0 && Some(&batch) == batches.last())
                .then_some(args.trace.as_deref())
                .flatten();
            let timing = time_batches(&mut runner, &info, batch, [height, width], args, trace)?;
            let result = BenchResult {
                tool: "visiond",
                model: info.name.clone(),
                architecture: info.architecture.clone(),
                device: device_name(info.device),
                dtype: dtype.to_string(),
                batch,
                height,
                width,
                iters: args.iters,
                ms_p50: timing.p50,
                ms_p90: timing.p90,
                img_per_s: f64::from(batch) * 1e3 / timing.p50,
                gflop_per_img: flops.map(|f| f / 1e9),
                gflop_per_s: flops.map(|f| f / 1e9 * f64::from(batch) * 1e3 / timing.p50),
                cuda_graphs: runner.execution().uses_graphs(),
                threads: tch::get_num_threads(),
            };
            write_result(out, &result, args.json).map_err(write_err)?;
        }
    }
    Ok(())
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_owned(),
    }
}

/// `--size`, else what the model's image processor makes of a square frame, else the
/// checkpoint's own image size.
fn input_size(info: &ModelInfo, size: Option<[i64; 2]>) -> Result<[i64; 2], BenchError> {
    if let Some(size) = size {
        return Ok(size);
    }
    if let Ok(processor) = tensors::preprocessor_for(info, None) {
        let (h, w) = processor.output_size(DEFAULT_FRAME_SIDE, DEFAULT_FRAME_SIDE);
        if h > 0 && w > 0 {
            return Ok([h, w]);
        }
    }
    info.image_size.ok_or_else(|| {
        BenchError::Input(format!(
            "{}: no image processor or image_size says what input the model takes; pass --size HxW",
            info.name
        ))
    })
}

fn random_input(info: &ModelInfo, batch: u32, [h, w]: [i64; 2]) -> Result<Tensor, BenchError> {
    tch::manual_seed(0);
    let kind = torch_kind(info.dtype);
    Tensor::f_randn([i64::from(batch), 3, h, w], (Kind::Float, info.device))
        .and_then(|t| t.f_to_kind(kind))
        .map_err(|e| BenchError::Runtime(format!("cannot make the input: {e}")))
}

/// FLOPs per image, from one eager forward of a single image.
fn count_flops(
    runner: &ModelRunner,
    info: &ModelInfo,
    h: i64,
    w: i64,
) -> Result<Option<f64>, BenchError> {
    let x = random_input(info, 1, [h, w])?;
    let counter = FlopCounter::start().map_err(|e| BenchError::Runtime(e.to_string()))?;
    let output = tch::no_grad(|| runner.model().forward(&x));
    let flops = counter
        .stop()
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    drop(output?);
    Ok((flops > 0.0).then_some(flops))
}

struct Timing {
    p50: f64,
    p90: f64,
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

fn time_batches(
    runner: &mut ModelRunner,
    info: &ModelInfo,
    batch: u32,
    size: [i64; 2],
    args: &BenchArgs,
    trace: Option<&std::path::Path>,
) -> Result<Timing, BenchError> {
    let x = random_input(info, batch, size)?;
    for _ in 0..args.warmup {
        drop(runner.forward(&x)?);
    }
    synchronize(info.device);
    let mut times = Vec::with_capacity(args.iters as usize);
    for _ in 0..args.iters {
        let start = Instant::now();
        let output = runner.forward(&x)?;
        synchronize(info.device);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(output);
    }
    if let Some(path) = trace {
        let recording = Trace::start(matches!(info.device, Device::Cuda(_)))
            .map_err(|e| BenchError::Runtime(e.to_string()))?;
        let output = runner.forward(&x);
        synchronize(info.device);
        recording
            .stop(path)
            .map_err(|e| BenchError::Runtime(format!("--trace {}: {e}", path.display())))?;
        drop(output?);
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        p50: percentile(&times, 50.0),
        p90: percentile(&times, 90.0),
    })
}

fn write_result(out: &mut dyn Write, r: &BenchResult, json: bool) -> std::io::Result<()> {
    if json {
        let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        return writeln!(out, "{line}");
    }
    let gflops = r
        .gflop_per_s
        .map_or_else(|| "-".to_owned(), |g| format!("{g:.1}"));
    writeln!(
        out,
        "{:<28} {:<7} {:<5} {:>5} {:>9} {:>9.2} {:>9.2} {:>10.1} {:>9}  {}",
        r.model,
        r.device,
        r.dtype,
        r.batch,
        format!("{}x{}", r.height, r.width),
        r.ms_p50,
        r.ms_p90,
        r.img_per_s,
        gflops,
        if r.cuda_graphs { "on" } else { "off" }
    )
}
