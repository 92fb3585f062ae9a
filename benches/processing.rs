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
use visiond::frames::YuvColour;
use visiond::processing::{
    Annotator, Preprocessor, ProcessorConfig, Yuv420, rgb_to_i420, rgb_to_yuv_coefficients,
    yuv_to_rgb_coefficients, yuv420_to_rgb,
};
use visiond::runtime::native::{self, YuvToRgbParams};

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

    colour_conversions(device, iters, fh, fw, &frame);

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

/// The colour conversions both ways: tensor ops (`processing::colour`) and the fused kernels
/// (on CUDA one NVRTC kernel; on the CPU the same code in a plain loop).
fn colour_conversions(device: Device, iters: usize, fh: i64, fw: i64, rgb: &Tensor) {
    if let Device::Cuda(index) = device
        && let Err(e) = native::load_kernels(index)
    {
        println!("\ncolour conversions: the fused kernels cannot load: {e}");
        return;
    }
    println!("\ncolour conversions of a {fw}x{fh} frame: tensor ops | fused");
    let colour = YuvColour {
        kr: 0.2126,
        kb: 0.0722,
        full_range: false,
        chroma_h_cosited: true,
        chroma_v_cosited: false,
    };
    let (ch, cw) = ((fh + 1) / 2, (fw + 1) / 2);
    let y = Tensor::randint(256, [fh, fw], (Kind::Uint8, device));
    let u = Tensor::randint(256, [ch, cw], (Kind::Uint8, device));
    let v = Tensor::randint(256, [ch, cw], (Kind::Uint8, device));
    let uv = Tensor::stack(&[&u, &v], 2);
    let coefficients = yuv_to_rgb_coefficients(&colour).map(|c| c as i32);
    for (name, filtered) in [("I420 -> RGB", false), ("NV12 -> RGB", true)] {
        let frame = || {
            if filtered {
                Yuv420::Nv12 { y: &y, uv: &uv }
            } else {
                Yuv420::I420 {
                    y: &y,
                    u: &u,
                    v: &v,
                }
            }
        };
        let ops = time(device, iters, || {
            yuv420_to_rgb(frame(), &colour).expect("convert")
        });
        let (u, v) = if filtered {
            (uv.select(2, 0), uv.select(2, 1))
        } else {
            (u.shallow_clone(), v.shallow_clone())
        };
        let params = YuvToRgbParams {
            filtered,
            h_cosited: colour.chroma_h_cosited,
            v_cosited: colour.chroma_v_cosited,
            coefficients,
        };
        let fused = time(device, iters, || {
            native::fused_yuv420_to_rgb(&y, &u, &v, &params).expect("convert")
        });
        println!(
            "  {name:<34} {:>8.2} | {:>8.2} ms/frame",
            ms(ops),
            ms(fused)
        );
    }
    let ops = time(device, iters, || {
        rgb_to_i420(rgb, &colour).expect("convert").0
    });
    let rgb_coefficients = rgb_to_yuv_coefficients(&colour);
    let fused = time(device, iters, || {
        let (y, u, v) = (y.empty_like(), u.empty_like(), v.empty_like());
        native::fused_rgb_to_yuv420(rgb, [&y, &u, &v], true, false, &rgb_coefficients)
            .expect("convert");
        y
    });
    println!(
        "  {:<34} {:>8.2} | {:>8.2} ms/frame",
        "RGB -> I420",
        ms(ops),
        ms(fused)
    );
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
