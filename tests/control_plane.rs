//! The control plane over real HTTP: a running engine (test sources, a source that cannot
//! connect, a stand-in model), the server on port 0 with its own shutdown future, a real
//! HTTP client, and `/metrics` read by a Prometheus text parser. Then `visiond run` itself:
//! it logs the address it listens on, answers, and exits 0 on SIGTERM.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};
use visiond::config::Task;
use visiond::control::ControlServer;
use visiond::frames::{Frame, Processed};
use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;
use visiond::pipeline::view::SharedView;
use visiond::runtime::{BatchInference, FrameFailure, HostFrames, LoadError, ModelRuntime};

use common::*;

/// A model stand-in: hands every frame on unchanged.
struct Echo;

impl BatchInference for Echo {
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
        frames
            .into_iter()
            .map(|frame| Ok(Processed::passthrough(frame)))
            .collect()
    }
}

fn echo_factory(_: &str) -> Result<ModelRuntime, LoadError> {
    Ok(ModelRuntime {
        inference: Box::new(Echo),
        stager: std::sync::Arc::new(HostFrames),
        task: Task::Depth,
        cuda_device: None,
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// Status, content type and body of a request, whatever the status.
fn request(agent: &ureq::Agent, method: &str, url: &str) -> (u16, String, String) {
    let response = match agent.request(method, url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").unwrap_or("").to_string();
    (status, content_type, response.into_string().unwrap())
}

fn scrape(agent: &ureq::Agent, base: &str) -> (String, Scrape) {
    let (status, content_type, body) = request(agent, "GET", &format!("{base}/metrics"));
    assert_eq!(status, 200, "{body}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    (content_type, scrape)
}

/// The value of the sample `metric` whose labels include all of `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = find(scrape, metric, labels);
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric}: not a single value: {other:?}"),
    }
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(matching.len(), 1, "{metric} {labels:?}: {matching:?}");
    matching[0]
}

/// Starts the control plane for `view` on a port-0 listener; returns its address, the
/// sender that stops it, the runtime and the server task.
struct Running {
    runtime: tokio::runtime::Runtime,
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn serve(view: SharedView) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(ControlServer::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let address = server.local_addr();
    assert_ne!(address.port(), 0, "port 0 resolves to the bound port");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(server.serve(view, async move {
        let _ = stopped.await;
    }));
    Running {
        runtime,
        address,
        stop,
        task,
    }
}

#[test]
fn every_endpoint_reports_the_running_engine() {
    let out = tempfile::tempdir().unwrap();
    let meta = |name: &str| out.path().join(format!("{name}.jsonl"));
    let (_dir, config) = temp_tree(
        &format!("models:\n{}", model_yaml("echo", "dpt-vit", "")),
        &[
            // Nothing listens on the discard port: the source fails and reconnects.
            Pipeline::new("cam")
                .source(Source::uri("rtsp://127.0.0.1:9/none").reconnect(50, 200))
                .model("none")
                .jsonl(&meta("cam")),
            Pipeline::new("inferred")
                .source(Source::test(64, 48).fps(30))
                .model("echo")
                .queue("{ capacity: 3 }")
                .jsonl(&meta("inferred")),
            Pipeline::new("live")
                .source(Source::test(64, 48).fps(30))
                .model("none")
                .queue("{ capacity: 4 }")
                .jsonl(&meta("live")),
            Pipeline::new("short")
                .source(Source::test(64, 48).fps(30).frames(10))
                .model("none")
                .jsonl(&meta("short")),
        ],
    );
    let engine = Engine::start(&config, &echo_factory).unwrap();
    let running = serve(engine.view());
    let base = format!("http://{}", running.address);
    let agent = agent();

    assert_eq!(
        request(&agent, "GET", &format!("{base}/healthz")),
        (
            200,
            "text/plain; charset=utf-8".to_string(),
            "ok".to_string()
        )
    );

    let state = |name: &str| engine.pipeline(name).unwrap().stats.state();
    let settled = || {
        state("live") == PipelineState::Playing
            && state("inferred") == PipelineState::Playing
            && state("short") == PipelineState::Finished
            && engine.pipeline("live").unwrap().stats.frames_out() > 0
            && engine.pipeline("inferred").unwrap().stats.frames_out() > 0
            && engine.pipeline("cam").unwrap().stats.reconnects() >= 2
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !settled() {
        assert!(
            Instant::now() < deadline,
            "the pipelines did not settle: {}",
            request(&agent, "GET", &format!("{base}/api/pipelines")).2
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Readiness: the camera holds it back, and the body says why.
    let (status, content_type, body) = request(&agent, "GET", &format!("{base}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(content_type, "application/json");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["ready"], false);
    let not_ready = readiness["not_ready"].as_array().unwrap();
    assert_eq!(not_ready.len(), 1, "{body}");
    assert_eq!(not_ready[0]["name"], "cam");
    assert_eq!(not_ready[0]["state"], "reconnecting");
    assert!(not_ready[0]["attempt"].as_u64().unwrap() >= 1, "{body}");
    assert!(
        !not_ready[0]["last_error"].as_str().unwrap().is_empty(),
        "{body}"
    );

    // The pipelines, in configuration order, with their counters.
    let (status, content_type, body) = request(&agent, "GET", &format!("{base}/api/pipelines"));
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let pipelines: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = pipelines
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam", "inferred", "live", "short"]);
    let by_name: HashMap<&str, &serde_json::Value> =
        names.iter().copied().zip(&pipelines).collect();
    let live = by_name["live"];
    assert_eq!(live["model"], "none");
    assert_eq!(live["state"], "playing");
    assert!(live["frames_in"].as_u64().unwrap() > 0, "{live}");
    assert!(live["frames_out"].as_u64().unwrap() > 0, "{live}");
    assert_eq!(live["dropped"]["output"], 0);
    assert!(live["dropped"]["input"].is_u64(), "{live}");
    assert_eq!(live["queue"]["capacity"], 4);
    assert!(live["queue"]["depth"].as_u64().unwrap() <= 4, "{live}");
    assert!(live["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{live}");
    assert!(
        live["latency_ms"]["p99"].as_f64().unwrap() >= live["latency_ms"]["p50"].as_f64().unwrap(),
        "{live}"
    );
    assert!(live["uptime_s"].as_f64().unwrap() > 0.0, "{live}");
    assert_eq!(live["reconnects"], 0);
    let short = by_name["short"];
    assert_eq!(short["state"], "finished");
    assert_eq!(
        (&short["frames_in"], &short["frames_out"]),
        (&10.into(), &10.into())
    );
    let cam = by_name["cam"];
    assert_eq!(cam["state"], "reconnecting");
    assert!(cam["attempt"].as_u64().unwrap() >= 1, "{cam}");
    assert!(cam["last_error"].is_string(), "{cam}");
    assert!(cam["reconnects"].as_u64().unwrap() >= 2, "{cam}");
    assert_eq!(cam["frames_in"], 0);
    assert_eq!(cam["latency_ms"]["p50"], serde_json::Value::Null);
    assert_eq!(by_name["inferred"]["model"], "echo");
    assert_eq!(by_name["inferred"]["queue"]["capacity"], 3);

    // Metrics, as Prometheus reads them.
    let (content_type, first) = scrape(&agent, &base);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for family in [
        "visiond_frames_in_total",
        "visiond_frames_out_total",
        "visiond_frames_dropped_total",
        "visiond_queue_depth",
        "visiond_queue_capacity",
        "visiond_pipeline_state",
        "visiond_reconnects_total",
        "visiond_frame_latency_seconds",
        "visiond_inference_batches_total",
        "visiond_inference_frames_total",
        "visiond_inference_failed_frames_total",
        "visiond_batch_size_max",
        "visiond_gpu_memory_bytes",
    ] {
        assert!(first.docs.contains_key(family), "no HELP for {family}");
    }
    let live_out =
        |scrape: &Scrape| value(scrape, "visiond_frames_out_total", &[("pipeline", "live")]);
    let before = live_out(&first);
    assert!(before > 0.0);
    wait_until("more frames out", Duration::from_secs(10), || {
        live_out(&scrape(&agent, &base).1) > before
    });
    assert_eq!(
        value(&first, "visiond_frames_in_total", &[("pipeline", "short")]),
        10.0
    );
    for hop in ["input", "output"] {
        value(
            &first,
            "visiond_frames_dropped_total",
            &[("pipeline", "live"), ("hop", hop)],
        );
    }
    assert_eq!(
        value(&first, "visiond_queue_capacity", &[("pipeline", "live")]),
        4.0
    );
    assert!(value(&first, "visiond_queue_depth", &[("pipeline", "live")]) <= 4.0);
    assert!(value(&first, "visiond_reconnects_total", &[("pipeline", "cam")]) >= 2.0);
    assert_eq!(
        value(&first, "visiond_reconnects_total", &[("pipeline", "live")]),
        0.0
    );
    for (pipeline, current) in [
        ("live", "playing"),
        ("short", "finished"),
        ("cam", "reconnecting"),
    ] {
        for state in ["starting", "playing", "reconnecting", "failed", "finished"] {
            assert_eq!(
                value(
                    &first,
                    "visiond_pipeline_state",
                    &[("pipeline", pipeline), ("state", state)]
                ),
                if state == current { 1.0 } else { 0.0 },
                "{pipeline} {state}"
            );
        }
    }

    // The latency histogram: cumulative buckets, +Inf equal to the count.
    for pipeline in ["live", "short", "inferred", "cam"] {
        let histogram = find(
            &first,
            "visiond_frame_latency_seconds",
            &[("pipeline", pipeline)],
        );
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("{pipeline}: not a histogram: {histogram:?}");
        };
        assert_eq!(buckets.len(), 14, "{pipeline}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
            "{pipeline}: {buckets:?}"
        );
        let last = buckets.last().unwrap();
        assert!(last.less_than.is_infinite());
        let count = value(
            &first,
            "visiond_frame_latency_seconds_count",
            &[("pipeline", pipeline)],
        );
        assert_eq!(last.count, count, "{pipeline}");
        let sum = value(
            &first,
            "visiond_frame_latency_seconds_sum",
            &[("pipeline", pipeline)],
        );
        if pipeline == "short" {
            assert_eq!(count, 10.0);
        }
        if pipeline == "cam" {
            assert_eq!((count, sum), (0.0, 0.0));
        } else {
            assert!(count > 0.0 && sum > 0.0, "{pipeline}: {count} {sum}");
        }
        assert!(
            (buckets[0].less_than - 0.001).abs() < 0.00003,
            "{buckets:?}"
        );
        assert!((buckets[12].less_than - 10.0).abs() < 0.3, "{buckets:?}");
    }

    // The stand-in model's worker.
    assert!(
        value(
            &first,
            "visiond_inference_batches_total",
            &[("model", "echo")]
        ) > 0.0
    );
    assert!(
        value(
            &first,
            "visiond_inference_frames_total",
            &[("model", "echo")]
        ) > 0.0
    );
    assert_eq!(
        value(
            &first,
            "visiond_inference_failed_frames_total",
            &[("model", "echo")]
        ),
        0.0
    );
    assert!(value(&first, "visiond_batch_size_max", &[("model", "echo")]) >= 1.0);
    // Its batch sizes: cumulative buckets up to 64 and +Inf, the sum being the frames.
    let sizes = find(&first, "visiond_inference_batch_size", &[("model", "echo")]);
    let Value::Histogram(buckets) = &sizes.value else {
        panic!("not a histogram: {sizes:?}");
    };
    let edges: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert_eq!(edges[..7], [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
    assert!(edges[7].is_infinite());
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    let batches = value(
        &first,
        "visiond_inference_batch_size_count",
        &[("model", "echo")],
    );
    assert_eq!(buckets[7].count, batches);
    assert!(
        batches
            >= value(
                &first,
                "visiond_inference_batches_total",
                &[("model", "echo")]
            )
    );
    assert!(
        value(
            &first,
            "visiond_inference_batch_size_sum",
            &[("model", "echo")]
        ) >= value(
            &first,
            "visiond_inference_batches_total",
            &[("model", "echo")]
        )
    );

    // The process: what this build is, and what it holds.
    let build = find(&first, "visiond_build_info", &[]);
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    // The commit this was built from: this checkout's HEAD, asked of git here.
    let head = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let expected = std::env::var("VISIOND_COMMIT")
        .ok()
        .or(head)
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        build.labels.get("commit"),
        Some(expected.as_str()),
        "visiond_build_info's commit label"
    );
    assert_eq!(build.labels.get("libtorch"), Some("2.11.0"));
    assert!(
        build
            .labels
            .get("gstreamer")
            .is_some_and(|v| v.starts_with("1."))
    );
    assert!(value(&first, "process_resident_memory_bytes", &[]) > 10e6);
    assert!(value(&first, "process_cpu_seconds_total", &[]) > 0.0);
    assert!(value(&first, "process_open_fds", &[]) >= 10.0);
    assert!(value(&first, "process_threads", &[]) >= 8.0);

    // Unknown paths and other methods.
    assert_eq!(request(&agent, "GET", &format!("{base}/nope")).0, 404);
    assert_eq!(
        request(&agent, "GET", &format!("{base}/api/pipelines/x")).0,
        404
    );
    assert_eq!(request(&agent, "POST", &format!("{base}/metrics")).0, 405);
    assert_eq!(request(&agent, "DELETE", &format!("{base}/healthz")).0, 405);

    // The server stops on its own shutdown future, even with the client's idle keep-alive
    // connection still open; the engine is unaffected.
    let Running {
        runtime,
        stop,
        task,
        ..
    } = running;
    stop.send(()).unwrap();
    let started = Instant::now();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
        .expect("the server stops within 5 s")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(running.address).is_err(),
        "the port is closed"
    );
    drop(agent);
    assert_eq!(state("live"), PipelineState::Playing);
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    // The camera that never connected did not finish: it failed, with its last error.
    for report in &reports {
        match (report.name.as_str(), &report.state) {
            ("cam", PipelineState::Failed { error }) => assert!(
                error.starts_with("no frame was ever received; last error:"),
                "{error}"
            ),
            (_, state) => assert_eq!(state, &PipelineState::Finished, "{reports:?}"),
        }
    }
}

#[test]
fn readiness_turns_on_once_every_pipeline_plays() {
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("live")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .jsonl(&out.path().join("live.jsonl"))],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let running = serve(engine.view());
    let url = format!("http://{}/readyz", running.address);
    let agent = agent();
    wait_until("readiness", Duration::from_secs(20), || {
        let (status, _, body) = request(&agent, "GET", &url);
        if status == 503 {
            // Before the source plays, it is the one named.
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["not_ready"][0]["name"], "live");
            assert_eq!(body["not_ready"][0]["state"], "starting");
        }
        status == 200
    });
    let (_, _, body) = request(&agent, "GET", &url);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"ready": true, "not_ready": []})
    );
    // After the drain every pipeline is finished, which is ready too.
    engine.shutdown_handle().trigger();
    let view = engine.view();
    engine.wait();
    assert_eq!(
        view.current().pipelines()[0].stats.state(),
        PipelineState::Finished
    );
    assert_eq!(request(&agent, "GET", &url).0, 200);
    running.stop.send(()).unwrap();
    running.runtime.block_on(running.task).unwrap().unwrap();
}

#[test]
fn visiond_run_serves_the_control_plane_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The base tree listens on 127.0.0.1:0.
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("live")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .jsonl(&dir.path().join("live.jsonl"))],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let address: SocketAddr = daemon
        .field(
            "control plane listening",
            "address",
            Duration::from_secs(30),
        )
        .parse()
        .expect("the daemon logs the address it listens on");
    assert_ne!(address.port(), 0);
    let agent = agent();
    let (status, _, body) = request(&agent, "GET", &format!("http://{address}/healthz"));
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (_, scrape) = scrape(&agent, &format!("http://{address}"));
    find(&scrape, "visiond_frames_in_total", &[("pipeline", "live")]);
    // SIGTERM lands within milliseconds of the start, often while the source is still
    // starting: the drain must not hang there either.
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("control plane stopped"), "{log}");
    assert!(log.contains("live: finished"), "{log}");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "the control plane port is closed"
    );
}
