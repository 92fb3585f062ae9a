//! A stage that breaks or hangs costs its own pipeline, counted, and nothing else: a sink that
//! fails or stops taking frames under `block`, a model that panics. The other pipelines on the
//! same model go on, and a shutdown still ends within its grace period.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The shutdown grace period of these trees.
const GRACE: Duration = Duration::from_secs(1);

/// A tree with the `depth` model (the tiny DPT fixture on the CPU), a short grace period and
/// quick output retries.
fn tree(pipelines: &[Pipeline]) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "outputs: {{ retry_initial_ms: 200, retry_max_ms: 400 }}\nmodels:\n{}",
        model_yaml(
            "depth",
            "dpt-vit",
            "device: cpu, batch: { max_size: 4, max_wait_ms: 5 }"
        )
    );
    let file = write_tree(dir.path(), &extra, pipelines);
    let text = std::fs::read_to_string(&file).unwrap();
    let grace = format!("grace_ms: {}", GRACE.as_millis());
    std::fs::write(&file, text.replace("grace_ms: 5000", &grace)).unwrap();
    let config = visiond::preflight::load(&file).unwrap_or_else(|e| panic!("{e}"));
    (dir, config)
}

fn live(name: &str) -> Pipeline {
    Pipeline::new(name)
        .source(Source::test(64, 48).fps(30))
        .model("depth")
        .launch_sink("fakesink")
}

/// Waits until `pipeline` has published `frames` more frames than now.
fn wait_for_progress(engine: &Engine, pipeline: &str, frames: u64, why: &str) {
    let stats = engine.pipeline(pipeline).unwrap().stats.clone();
    let before = stats.frames_out();
    wait_until(why, Duration::from_secs(60), || {
        stats.frames_out() >= before + frames
    });
}

#[test]
fn a_sink_that_fails_under_block_neither_hangs_its_output_nor_stalls_the_model() {
    // The finite pipeline's sink is slow (50 ms a frame) and errors after 40 frames in every
    // life of its output: a backlog waits in the encoder's queue (block) when the error comes,
    // and more than the appsrc holds arrives behind it. Its output must notice and rebuild, and
    // the live pipeline on the same model must never wait for it.
    let (_dir, config) = tree(&[
        Pipeline::new("doc")
            .source(Source::test(64, 48).fps(30).frames(150))
            .model("depth")
            .queue("{ capacity: 2, when_full: block }")
            .launch_sink("identity sleep-time=50000 error-after=40 ! fakesink"),
        live("live"),
    ]);
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    let doc = engine.pipeline("doc").unwrap();
    wait_until("doc's output failed", Duration::from_secs(60), || {
        doc.stats.output_restarts() >= 1
    });
    wait_for_progress(&engine, "live", 30, "the live pipeline went on");
    wait_until("doc ended", Duration::from_secs(120), || {
        matches!(doc.stats.state(), PipelineState::Failed { .. })
    });
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let doc = reports.iter().find(|r| r.name == "doc").unwrap();
    // Every frame is accounted for: out, or dropped (lost while the output was down).
    assert_eq!(doc.frames_in, 150, "{doc}");
    assert_eq!(doc.frames_in, doc.frames_out + doc.dropped, "{doc}");
    assert!(doc.frames_out >= 10 && doc.dropped > 0, "{doc}");
    match &doc.state {
        PipelineState::Failed { error } => assert!(
            error.contains("lost on the way") && error.contains("output failed"),
            "{error}"
        ),
        other => panic!("doc lost frames yet ended {other}"),
    }
    let live = reports.iter().find(|r| r.name == "live").unwrap();
    assert_eq!(live.state, PipelineState::Finished, "{live}");
}

#[test]
fn a_stuck_sink_holds_up_only_its_own_pipeline_and_shutdown_ends_within_the_grace_period() {
    // Each frame takes the finite pipeline's sink 2 s: its output queue, then its lane, then
    // its source fill up and wait. The live pipeline on the same model must go on at its own
    // pace, and a shutdown must let go of what waits once the grace period is over.
    let (_dir, config) = tree(&[
        Pipeline::new("doc")
            .source(Source::test(64, 48).fps(30).frames(300))
            .model("depth")
            .queue("{ capacity: 2, when_full: block }")
            .launch_sink("identity sleep-time=2000000 ! fakesink"),
        live("live"),
    ]);
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    let doc = engine.pipeline("doc").unwrap();
    // Its queues are full once frames stop coming out of its source's hop.
    wait_until("doc's queues are full", Duration::from_secs(60), || {
        doc.queue_depth().0 >= 2
    });
    wait_for_progress(&engine, "live", 60, "the live pipeline went on");
    let doc_in = doc.stats.frames_in();
    assert!(doc_in < 300, "doc was never held up ({doc_in} frames in)");
    let stopping = Instant::now();
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let took = stopping.elapsed();
    // The grace period, the output's own grace to finish, a frame the sink is inside (2 s),
    // and room for a loaded machine.
    assert!(took < GRACE * 3 + Duration::from_secs(12), "{took:?}");
    let doc = reports.iter().find(|r| r.name == "doc").unwrap();
    assert_eq!(doc.frames_in, doc.frames_out + doc.dropped, "{doc}");
    match &doc.state {
        PipelineState::Failed { error } => {
            assert!(error.contains("abandoned at shutdown"), "{error}")
        }
        other => panic!("doc's drain was abandoned yet it ended {other}"),
    }
    let live = reports.iter().find(|r| r.name == "live").unwrap();
    assert_eq!(live.state, PipelineState::Finished, "{live}");
}

/// A real model that panics once, in the forward after `after` good ones (a defect in a port,
/// say); every later instance of it is sound.
struct PanicsOnce {
    inner: Box<dyn VisionModel>,
    calls: std::sync::atomic::AtomicU64,
    after: u64,
    armed: Arc<AtomicBool>,
}

impl VisionModel for PanicsOnce {
    fn task(&self) -> Task {
        self.inner.task()
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if call == self.after && self.armed.swap(false, Ordering::Relaxed) {
            panic!("index out of bounds in the test model's forward");
        }
        self.inner.forward(pixel_values)
    }
}

fn panicking_factory(
    config: &Config,
    armed: Arc<AtomicBool>,
) -> impl Fn(&str) -> Result<ModelRuntime, LoadError> + '_ {
    move |name| {
        let model = &config.daemon.models[name];
        let loaded = checkpoint::open(&model.source, &LoadOptions::default())?;
        let preprocessor =
            Preprocessor::from_model_dir(&loaded.info.path, &loaded.info.architecture, None)?;
        let model = Box::new(PanicsOnce {
            inner: loaded.model,
            calls: Default::default(),
            after: 5,
            armed: armed.clone(),
        });
        let runner = ModelRunner::for_model(model, &loaded.info, Execution::Eager);
        Ok(TorchInference::new(runner, loaded.info, preprocessor).into_runtime())
    }
}

#[test]
fn a_model_that_panics_fails_its_pipelines_with_the_reason_and_a_reload_restarts_it() {
    let (_dir, config) = tree(&[live("a"), live("b")]);
    let armed = Arc::new(AtomicBool::new(true));
    let factory = panicking_factory(&config, armed.clone());
    let mut engine = Engine::start(&config, &factory).unwrap();
    for name in ["a", "b"] {
        let handle = engine.pipeline(name).unwrap();
        wait_until(&format!("{name} failed"), Duration::from_secs(60), || {
            matches!(handle.stats.state(), PipelineState::Failed { .. })
        });
        let state = handle.stats.state();
        assert!(
            state
                .to_string()
                .contains("the model worker for 'depth' panicked: index out of bounds"),
            "{state}"
        );
    }
    assert!(!armed.load(Ordering::Relaxed));
    // The batch the model panicked on is counted, not gone.
    let lost: u64 = ["a", "b"]
        .iter()
        .map(|name| {
            let stats = &engine.pipeline(name).unwrap().stats;
            stats
                .losses()
                .get("model worker stopped")
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(lost >= 1, "no frame of the panicked batch was counted");
    // A reload restarts the failed pipelines on a new worker.
    let changes = engine.apply(&config, &factory).unwrap();
    assert_eq!(changes.changed, ["a", "b"], "{changes:?}");
    for name in ["a", "b"] {
        let handle = engine.pipeline(name).unwrap();
        wait_until(
            &format!("{name} plays again"),
            Duration::from_secs(60),
            || handle.stats.state() == PipelineState::Playing && handle.stats.frames_out() >= 10,
        );
    }
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    assert!(
        reports.iter().all(|r| r.state == PipelineState::Finished),
        "{reports:?}"
    );
}
