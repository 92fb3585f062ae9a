//! Side-by-side model benchmark, visiond half: times the native forward of the checkpoints
//! `tools/bench_models.py` wrote (real shapes, random weights) with the same inputs.
//!
//!     ~/.cache/visiond/fixtures-venv/bin/python tools/bench_models.py --out /tmp/visiond-bench
//!     cargo bench --bench models -- --dir /tmp/visiond-bench [--iters 10] [--device cuda] [--dtype f16]
//!
//! Not a test: under `cargo test --all-targets` (no `--bench`) it returns at once.

use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use visiond::config::{DType, DeviceSpec, ModelSource};
use visiond::models::checkpoint::{self, LoadOptions};
use visiond::models::device::torch_kind;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(dir) = value("--dir").map(PathBuf::from) else {
        eprintln!("--dir DIR: the folder tools/bench_models.py wrote");
        std::process::exit(2);
    };
    let iters: usize = value("--iters").and_then(|v| v.parse().ok()).unwrap_or(10);
    let device: DeviceSpec = value("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("--device: {e}");
            std::process::exit(2);
        });
    let dtype: DType = value("--dtype")
        .unwrap_or_else(|| "f32".into())
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("--dtype: {e}");
            std::process::exit(2);
        });
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            eprintln!("{}: {e}", dir.display());
            std::process::exit(2);
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bench.json").is_file())
        .collect();
    models.sort();
    println!(
        "visiond, {dtype:?} on {device}, {} threads, median of {iters}",
        tch::get_num_threads()
    );
    let _no_grad = tch::no_grad_guard();
    for path in models {
        let bench: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("bench.json")).unwrap())
                .unwrap();
        let size = bench["size"].as_i64().unwrap();
        let batches: Vec<i64> = bench["batches"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b.as_i64())
            .collect();
        let options = LoadOptions {
            device,
            dtype,
            ..LoadOptions::default()
        };
        let loaded = match checkpoint::open(&ModelSource::Path(path.clone()), &options) {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("{error}");
                continue;
            }
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let target = loaded.info.device;
        for batch in batches {
            // The same input the Python half uses is not needed for timing; the shape is.
            let pixels = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu))
                .to_device(target)
                .to_kind(torch_kind(dtype));
            let mut times = Vec::with_capacity(iters);
            for i in 0..=iters {
                let start = Instant::now();
                let out = loaded.model.forward(&pixels).expect("forward");
                if let Device::Cuda(_) = target {
                    tch::Cuda::synchronize(0);
                }
                drop(out);
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            let ms = times[times.len() / 2];
            println!(
                "  {name:26} {size}x{size} batch {batch}: {ms:9.1} ms  {:7.2} img/s",
                batch as f64 * 1e3 / ms
            );
        }
    }
}
