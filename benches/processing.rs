//! Pre- and post-processing time per 1920x1080 frame, for each supported processor.
//!
//!     cargo bench --bench processing                      # CPU
//!     cargo bench --bench processing -- --device cuda     # GPU, when there is one
//!     cargo bench --bench processing -- --iters 50
//!
//! Frames start on the measured device (the daemon uploads each uint8 frame once); CUDA timings
//! synchronize before the clock stops. Not a test: numbers depend on the machine. Under
//! `cargo test --all-targets` (no `--bench` argument) it only smoke-runs every path once on a
//! small frame.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use visiond::config::{DepthRange, OverlayConfig, OverlayMode, Task};
use visiond::processing::{Annotator, Preprocessor, ProcessorConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device = match value("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => {
            eprintln!("--device {other}: use cpu or cuda");
            std::process::exit(2);
        }
    };
    if device != Device::Cpu && !tch::Cuda::is_available() {
        eprintln!("--device cuda: CUDA is not available");
        std::process::exit(2);
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let iters: usize = match value("--iters").and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None if smoke => 1,
        None => 20,
    };
    let (fh, fw) = if smoke { (108, 192) } else { (1080, 1920) };
    if smoke {
        println!("smoke run on {fh}x{fw} frames; `cargo bench --bench processing` measures");
    }
    let _guard = tch::no_grad_guard();
    println!(
        "device {device:?}, {} intra-op threads, {iters} iterations, median per frame",
        tch::get_num_threads()
    );

    let frame = Tensor::randint(256, [fh, fw, 3], (Kind::Uint8, Device::Cpu)).to_device(device);
    println!("\npreprocessing a {fw}x{fh} uint8 frame");
    let dinov2_backbone = serde_json::json!({"backbone_config": {"model_type": "dinov2"}});
    for (name, arch, model_config) in [
        ("DPTForDepthEstimation", "DPTForDepthEstimation", None),
        (
            "DPT, DINOv2 backbone (pad only)",
            "DPTForDepthEstimation",
            Some(&dinov2_backbone),
        ),
        (
            "DPTForSemanticSegmentation",
            "DPTForSemanticSegmentation",
            None,
        ),
        (
            "DepthAnythingForDepthEstimation",
            "DepthAnythingForDepthEstimation",
            None,
        ),
        (
            "BeitForImageClassification",
            "BeitForImageClassification",
            None,
        ),
        (
            "Dinov2ForImageClassification",
            "Dinov2ForImageClassification",
            None,
        ),
    ] {
        let config = ProcessorConfig::defaults_for(arch, model_config).expect("built-in processor");
        let pre = Preprocessor::from_config(config).expect("processor");
        let (h, w) = pre.output_size(fh, fw);
        for batch in [1usize, 4] {
            let frames: Vec<Tensor> = (0..batch).map(|_| frame.shallow_clone()).collect();
            let t = time(device, iters, || {
                pre.run(&frames, Kind::Float).expect("preprocess")
            });
            println!(
                "  {name:<34} -> {h}x{w} {:>2} frame(s): {:>8.2} ms/frame",
                batch,
                ms(t) / batch as f64
            );
        }
        let t = time(device, iters, || {
            pre.run(std::slice::from_ref(&frame), Kind::Half)
                .expect("preprocess")
        });
        println!(
            "  {name:<34} -> {h}x{w}  1 frame, f16: {:>8.2} ms/frame",
            ms(t)
        );
    }

    println!("\npost-processing onto a {fw}x{fh} frame");
    let depth = Tensor::rand([384, 384], (Kind::Float, device));
    let logits = Tensor::randn([150, 480, 480], (Kind::Float, device));
    let classes = Tensor::randn([1000], (Kind::Float, device));
    for (name, task, output, mode) in [
        (
            "depth 384x384, blend",
            Task::Depth,
            &depth,
            OverlayMode::Blend,
        ),
        (
            "depth 384x384, side_by_side",
            Task::Depth,
            &depth,
            OverlayMode::SideBySide,
        ),
        (
            "segmentation 150x480x480, blend",
            Task::Segmentation,
            &logits,
            OverlayMode::Blend,
        ),
        (
            "classification 1000",
            Task::Classification,
            &classes,
            OverlayMode::Blend,
        ),
    ] {
        let overlay = OverlayConfig {
            mode,
            range: DepthRange::Ema,
            ..OverlayConfig::default()
        };
        let mut annotator = Annotator::new(&overlay, task, vec![]);
        let t = time(device, iters, || {
            annotator.annotate(&frame, output).expect("annotate").frame
        });
        println!("  {name:<34} {:>8.2} ms/frame", ms(t));
    }
}

fn time(device: Device, iters: usize, mut f: impl FnMut() -> Tensor) -> Duration {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..2.min(iters) {
        let _ = f();
    }
    sync();
    let mut samples: Vec<Duration> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = f();
            sync();
            drop(out);
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
