//! The engine with real (tiny, random-weight) models: annotated outputs, batching across
//! pipelines, and backpressure under a deliberately slow model.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::Tensor;
use visiond::config::{Config, Task};
use visiond::models::checkpoint::{self, LoadOptions};
use visiond::models::{ModelError, VisionModel};
use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;
use visiond::processing::Preprocessor;
use visiond::runtime::{self, Execution, LoadError, ModelRunner, ModelRuntime, TorchInference};

use common::*;

/// These tests measure queueing and latency under a model's load; run them one at a time so
/// that they do not share the machine's two cores (and libtorch's thread pool) with each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A config tree with the given `models:` entries (see [`model_yaml`]).
fn tree(models: &str, pipelines: &[Pipeline]) -> (tempfile::TempDir, Config) {
    temp_tree(&format!("models:\n{models}"), pipelines)
}

/// A real model that takes `delay` longer per batch: a stand-in for a big model on a small box.
struct Slow {
    inner: Box<dyn VisionModel>,
    delay: Duration,
}

impl VisionModel for Slow {
    fn task(&self) -> Task {
        self.inner.task()
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        std::thread::sleep(self.delay);
        self.inner.forward(pixel_values)
    }
}

/// The real loading path, with the model slowed down by `delay` per batch.
fn slow_factory(
    config: &Config,
    delay: Duration,
) -> impl Fn(&str) -> Result<ModelRuntime, LoadError> + '_ {
    move |name| {
        let model = &config.daemon.models[name];
        let loaded = checkpoint::open(&model.source, &LoadOptions::default())?;
        let preprocessor =
            Preprocessor::from_model_dir(&loaded.info.path, &loaded.info.architecture, None)?;
        let slow = Box::new(Slow {
            inner: loaded.model,
            delay,
        });
        let runner = ModelRunner::for_model(slow, &loaded.info, Execution::Eager);
        Ok(TorchInference::new(runner, loaded.info, preprocessor).into_runtime())
    }
}

#[test]
fn depth_and_classification_pipelines_write_annotated_video_and_results() {
    let _serial = serial();
    let out = tempfile::tempdir().unwrap();
    let o = |name: &str| out.path().join(name);
    let models = model_yaml("depth", "dpt-vit", "device: cpu")
        + &model_yaml("documents", "dit", "device: cpu");
    let (_dir, config) = tree(
        &models,
        &[
            Pipeline::new("depth")
                .source(Source::test(96, 72).fps(30).frames(20))
                .model("depth")
                .overlay("{ mode: side_by_side }")
                .file_sink(&o("depth.mp4"))
                .jsonl(&o("depth.jsonl")),
            Pipeline::new("documents")
                .source(Source::test(80, 64).fps(30).frames(20))
                .model("documents")
                .file_sink(&o("documents.mp4"))
                .jsonl(&o("documents.jsonl")),
        ],
    );
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    let reports = engine.wait();
    for report in &reports {
        assert_eq!(report.state, PipelineState::Finished, "{report}");
        assert_eq!(
            (report.frames_in, report.frames_out, report.dropped),
            (20, 20, 0),
            "{report}"
        );
    }
    let depth = jsonl(&out.path().join("depth.jsonl"));
    assert_eq!(depth.len(), 20);
    for line in &depth {
        assert_eq!(line["model"], "depth");
        let results = &line["results"];
        assert_eq!(results["kind"], "depth");
        let (min, mean, max) = (
            results["min"].as_f64().unwrap(),
            results["mean"].as_f64().unwrap(),
            results["max"].as_f64().unwrap(),
        );
        assert!(min <= mean && mean <= max && max > 0.0, "{results}");
    }
    let documents = jsonl(&out.path().join("documents.jsonl"));
    assert_eq!(documents.len(), 20);
    let labels = ["letter", "form", "email", "handwritten"];
    for line in &documents {
        let top = &line["results"]["top_k"];
        assert!(!top.as_array().unwrap().is_empty(), "{line}");
        let score = top[0]["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        let label = top[0]["label"].as_str().unwrap();
        assert!(
            labels.contains(&label) || label.starts_with("LABEL"),
            "{label}"
        );
    }
    // side_by_side doubles the width of the published video.
    let decoded = |name: &str| {
        let d = decode_h264(&out.path().join(name), "qtdemux");
        (d.frames, d.width, d.height)
    };
    assert_eq!(decoded("depth.mp4"), (20, 192, 72));
    assert_eq!(decoded("documents.mp4"), (20, 80, 64));
}

#[test]
fn two_pipelines_share_one_model_in_batches_and_get_their_own_results() {
    let _serial = serial();
    let out = tempfile::tempdir().unwrap();
    let models = model_yaml(
        "depth",
        "dpt-vit",
        "device: cpu, batch: { max_size: 4, max_wait_ms: 50 }",
    );
    let pipeline = |name: &str, width: u32, height: u32| {
        Pipeline::new(name)
            .source(Source::test(width, height).fps(30).frames(30))
            .model("depth")
            .queue("{ capacity: 8, when_full: block }")
            .jsonl(&out.path().join(format!("{name}.jsonl")))
    };
    let (_dir, config) = tree(
        &models,
        &[pipeline("left", 64, 48), pipeline("right", 96, 80)],
    );
    // A little slowness lets frames queue up, as a real model would.
    let factory = slow_factory(&config, Duration::from_millis(15));
    let engine = Engine::start(&config, &factory).unwrap();
    let stats = engine.worker_stats("depth").unwrap();
    let reports = engine.wait();
    for report in &reports {
        assert_eq!((report.frames_out, report.dropped), (30, 0), "{report}");
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        stats.multi_frame_batches.load(Relaxed) > 0,
        "no batch held more than one frame"
    );
    assert!(stats.largest_batch.load(Relaxed) <= 4);
    assert_eq!(stats.frames.load(Relaxed), 60);
    assert!(stats.batches.load(Relaxed) < 60);
    // Each result went back to the pipeline its frame came from.
    for (name, width, height) in [("left", 64, 48), ("right", 96, 80)] {
        let lines = jsonl(&out.path().join(format!("{name}.jsonl")));
        assert_eq!(lines.len(), 30);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["pipeline"], name);
            assert_eq!(line["seq"], i as u64);
            assert_eq!(
                (line["width"].as_u64(), line["height"].as_u64()),
                (Some(width), Some(height))
            );
            assert_eq!(line["results"]["kind"], "depth");
        }
    }
}

#[test]
fn a_slow_model_with_drop_oldest_bounds_queue_and_latency_and_counts_drops() {
    let _serial = serial();
    let models = model_yaml(
        "depth",
        "dpt-vit",
        "device: cpu, batch: { max_size: 1, max_wait_ms: 0 }",
    );
    let (_dir, config) = tree(
        &models,
        &[Pipeline::new("camera")
            .source(Source::test(64, 48).fps(30))
            .model("depth")
            .queue("{ capacity: 2, when_full: drop_oldest }")
            .file_sink_with(Path::new("/dev/null"), "format: mkv")],
    );
    let factory = slow_factory(&config, Duration::from_millis(100));
    let engine = Engine::start(&config, &factory).unwrap();
    let camera = engine.pipeline("camera").unwrap();
    let started = Instant::now();
    let mut deepest = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let (depth, capacity) = camera.queue_depth();
        assert_eq!(capacity, 2);
        deepest = deepest.max(depth);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(deepest <= 2, "queue grew to {deepest}");
    let stats = Arc::clone(&camera.stats);
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let report = &reports[0];
    assert_eq!(report.state, PipelineState::Finished);
    // ~30 fps in, ~10 fps through the model: most frames are dropped, and every one counted.
    assert!(report.dropped > report.frames_out, "{report}");
    assert_eq!(
        report.frames_in,
        report.frames_out + report.dropped,
        "{report}"
    );
    // Latency stays at a few model-times (a frame waits behind at most `capacity` others)
    // instead of growing with the backlog. The model-time is measured, not assumed, because
    // a loaded machine makes every step slower.
    let model_time = Duration::from_secs_f64(report.seconds / report.frames_out as f64);
    let bound = model_time * (2 + 2) * 3 / 2 + Duration::from_millis(200);
    let p99 = stats.latency.quantile(0.99).unwrap();
    assert!(
        p99 < bound,
        "p99 latency {p99:?}, bound {bound:?} ({report})"
    );
    assert!(
        bound < Duration::from_secs(3),
        "the model ran far slower than its 100 ms: {report}"
    );
}

#[test]
fn a_slow_model_with_block_loses_nothing() {
    let _serial = serial();
    let out = tempfile::tempdir().unwrap();
    let meta = out.path().join("all.jsonl");
    let models = model_yaml("depth", "dpt-vit", "device: cpu, batch: { max_size: 1 }");
    let (_dir, config) = tree(
        &models,
        &[Pipeline::new("all")
            .source(Source::test(64, 48).fps(30).frames(25))
            .model("depth")
            .queue("{ capacity: 1, when_full: block }")
            .jsonl(&meta)],
    );
    let factory = slow_factory(&config, Duration::from_millis(20));
    let engine = Engine::start(&config, &factory).unwrap();
    let reports = engine.wait();
    assert_eq!(
        (
            reports[0].frames_in,
            reports[0].frames_out,
            reports[0].dropped
        ),
        (25, 25, 0)
    );
    let seqs: Vec<u64> = jsonl(&meta)
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
}

#[test]
fn a_depth16_sink_records_the_raw_depth_losslessly() {
    let _serial = serial();
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let out = tempfile::tempdir().unwrap();
    let raw = out.path().join("depth16.mkv");
    let (_dir, config) = tree(
        &model_yaml("depth", "dpt-vit", "device: cpu"),
        &[Pipeline::new("raw")
            .source(Source::test(80, 60).pattern("ball").fps(30).frames(12))
            .model("depth")
            .depth16_sink(&raw)],
    );
    let reports = Engine::start(&config, &runtime::loader(&config))
        .unwrap()
        .wait();
    assert_eq!(
        (reports[0].frames_out, &reports[0].state),
        (12, &PipelineState::Finished)
    );
    let (pipeline, sink) = play(&format!(
        "filesrc location=\"{}\" ! matroskademux ! avdec_ffv1 ! appsink name=sink sync=false",
        raw.display()
    ));
    let mut frames = 0;
    while let Ok(sample) = sink.pull_sample() {
        let info = gstreamer_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        assert_eq!(info.format(), gstreamer_video::VideoFormat::Gray16Le);
        assert_eq!((info.width(), info.height()), (80, 60));
        let map = sample.buffer().unwrap().map_readable().unwrap();
        let samples: Vec<u16> = map
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        // The depth range spans the 16 bits: the map is not flat.
        let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(hi - lo > 10_000, "{lo}..{hi}");
        frames += 1;
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(frames, 12);
}

#[test]
fn frames_with_padded_rows_reach_the_model_intact() {
    let _serial = serial();
    let out = tempfile::tempdir().unwrap();
    let meta = out.path().join("odd.jsonl");
    let video = out.path().join("odd.mkv");
    // 81 RGB pixels are 243 bytes: GStreamer pads each row to 244.
    let (_dir, config) = tree(
        &model_yaml("depth", "dpt-vit", "device: cpu"),
        &[Pipeline::new("odd")
            .source(Source::test(81, 61).fps(30).frames(6))
            .model("depth")
            .overlay("{ mode: side_by_side }")
            .file_sink(&video)
            .jsonl(&meta)],
    );
    let reports = Engine::start(&config, &runtime::loader(&config))
        .unwrap()
        .wait();
    assert_eq!(
        (reports[0].frames_out, &reports[0].state),
        (6, &PipelineState::Finished)
    );
    for line in jsonl(&meta) {
        assert_eq!(
            (line["width"].as_u64(), line["height"].as_u64()),
            (Some(81), Some(61))
        );
        assert_eq!(line["results"]["kind"], "depth");
    }
    // side_by_side is 162 wide; 4:2:0 encoding trims the odd height to 60.
    let decoded = decode_h264(&video, "matroskademux");
    assert_eq!(
        (decoded.frames, decoded.width, decoded.height),
        (6, 162, 60)
    );
}

#[test]
fn under_overload_every_live_stream_gets_its_share() {
    let _serial = serial();
    // Eight cameras at 30 fps into a model that takes at most about 80 frames a second: most
    // frames must go, and every camera must keep the same share of what the model does.
    let out = tempfile::tempdir().unwrap();
    let models = model_yaml(
        "depth",
        "dpt-vit",
        "device: cpu, batch: { max_size: 4, max_wait_ms: 5 }",
    );
    let pipelines: Vec<Pipeline> = (0..8)
        .map(|i| {
            let name = format!("cam{i}");
            Pipeline::new(&name)
                .source(Source::test(64, 48).fps(30))
                .model("depth")
                .queue("{ capacity: 2, when_full: drop_oldest }")
                .jsonl(&out.path().join(format!("{name}.jsonl")))
        })
        .collect();
    let (_dir, config) = tree(&models, &pipelines);
    let factory = slow_factory(&config, Duration::from_millis(50));
    let engine = Engine::start(&config, &factory).unwrap();
    let handles: Vec<_> = engine.pipelines().iter().map(|p| p.stats.clone()).collect();
    let drops: Vec<_> = engine
        .pipelines()
        .iter()
        .map(|p| p.input_drops.clone())
        .collect();
    // Warm-up: every camera playing and through the model once, then a second more.
    wait_until(
        "every camera's first result",
        Duration::from_secs(60),
        || handles.iter().all(|s| s.frames_out() > 0),
    );
    std::thread::sleep(Duration::from_secs(1));
    let counts = || -> Vec<u64> { handles.iter().map(|s| s.frames_out()).collect() };
    let dropped = || -> Vec<u64> { drops.iter().map(|d| d.get()).collect() };
    let (start, start_drops) = (counts(), dropped());
    std::thread::sleep(Duration::from_secs(8));
    let (end, end_drops) = (counts(), dropped());
    engine.shutdown_handle().trigger();
    engine.wait();
    let shares: Vec<f64> = end
        .iter()
        .zip(&start)
        .map(|(e, s)| (e - s) as f64)
        .collect();
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    println!("frames per camera in 8 s: {shares:?}");
    assert!(mean >= 10.0, "the model barely ran: {shares:?}");
    for (i, share) in shares.iter().enumerate() {
        assert!(
            (share - mean).abs() <= 0.2 * mean && *share >= 0.5 * mean,
            "camera {i} got {share} frames against a mean of {mean:.1}: {shares:?}"
        );
    }
    // Overloaded: every camera lost frames at its own queue, none was spared at the others' cost.
    for (i, (e, s)) in end_drops.iter().zip(&start_drops).enumerate() {
        assert!(
            e > s,
            "camera {i} dropped nothing: {start_drops:?} -> {end_drops:?}"
        );
    }
}
