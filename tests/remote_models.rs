//! Models served by a real KServe v2 server (MLServer 1.7.1 with the fixture checkpoints, see
//! tests/common/mlserver.rs): parity with the local model, a server that goes away and comes
//! back under a live pipeline, a slow server, and the errors a wrong server gives.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;
use visiond::runtime::{self, RemoteFailure};

use common::mlserver::{MlServer, Served};
use common::*;

/// The server and the engine share two cores: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `models:` entry served by `server` as `served`, with the dpt-vit processor.
fn remote_yaml(name: &str, url: &str, served: &str, extra: &str) -> String {
    let processor = fixture("dpt-vit").display().to_string();
    format!(
        "  {name}:\n    remote: {{ url: \"{url}\", model: {served}, timeout_ms: 5000, max_in_flight: 2{extra} }}\n    processor: {{ path: \"{processor}\" }}\n    device: cpu\n"
    )
}

fn depth_results(path: &Path) -> Vec<(u64, [f64; 3])> {
    jsonl(path)
        .iter()
        .map(|line| {
            let r = &line["results"];
            let value = |key: &str| r[key].as_f64().unwrap();
            (
                line["seq"].as_u64().unwrap(),
                [value("min"), value("mean"), value("max")],
            )
        })
        .collect()
}

#[test]
fn served_results_equal_the_local_models_within_1e4() {
    let _serial = serial();
    let server = MlServer::start(&[
        Served::depth("depth"),
        Served::depth("depth-u8").input("uint8", "UINT8"),
        Served::depth("depth-f16").input("float", "FP16"),
    ]);
    let url = server.url();
    let out = tempfile::tempdir().unwrap();
    let models = model_yaml("local", "dpt-vit", "device: cpu")
        + &remote_yaml("f32", &url, "depth", "")
        + &remote_yaml("u8", &url, "depth-u8", ", input: uint8")
        + &remote_yaml("f16", &url, "depth-f16", "")
        + "    dtype: f16\n";
    let pipelines: Vec<Pipeline> = ["local", "f32", "u8", "f16"]
        .iter()
        .map(|model| {
            Pipeline::new(model)
                .source(Source::test(96, 72).fps(30).frames(12).pattern("ball"))
                .model(model)
                .queue("{ capacity: 16, when_full: block }")
                .jsonl(&out.path().join(format!("{model}.jsonl")))
        })
        .collect();
    let (_dir, config) = temp_tree(&format!("models:\n{models}"), &pipelines);
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    for report in engine.wait() {
        assert_eq!(report.state, PipelineState::Finished, "{report}");
        assert_eq!((report.frames_in, report.frames_out), (12, 12), "{report}");
    }
    let local = depth_results(&out.path().join("local.jsonl"));
    assert_eq!(local.len(), 12);
    for (model, tolerance) in [("f32", 1e-4), ("u8", 1e-4), ("f16", 2e-2)] {
        let served = depth_results(&out.path().join(format!("{model}.jsonl")));
        assert_eq!(served.len(), local.len(), "{model}");
        let mut worst: f64 = 0.0;
        for ((seq, ours), (served_seq, theirs)) in local.iter().zip(&served) {
            assert_eq!(seq, served_seq);
            for (a, b) in ours.iter().zip(theirs) {
                worst = worst.max((a - b).abs() / a.abs().max(1.0));
            }
        }
        println!("{model}: largest difference from the local model {worst:.2e}");
        assert!(worst <= tolerance, "{model}: {worst:e} > {tolerance:e}");
    }
}

fn get(url: &str) -> (u16, serde_json::Value) {
    let response = match ureq::get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{url}: {error}"),
    };
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.into_string().unwrap()).unwrap(),
    )
}

/// `frames in N, out M, dropped D` from the summary line of `pipeline`.
fn summary_counts(log: &str, pipeline: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pipeline}:")) && l.contains("frames in"))
        .unwrap_or_else(|| panic!("no summary for {pipeline}:\n{log}"));
    let number = |label: &str| -> u64 {
        line.split(label)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{label}' in {line}"))
    };
    (number("frames in"), number("out"), number("dropped"))
}

#[test]
fn a_server_away_for_10_s_leaves_the_pipeline_waiting_and_it_resumes_by_itself() {
    let _serial = serial();
    let mut server = MlServer::start(&[Served::depth("depth")]);
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let models = remote_yaml("depth", &url, "depth", "");
    let file = write_tree(
        dir.path(),
        &format!("models:\n{models}"),
        &[Pipeline::new("cam")
            .source(Source::test(96, 72).fps(10))
            .model("depth")
            .queue("{ capacity: 4, when_full: drop_oldest }")
            .jsonl(&dir.path().join("cam.jsonl"))],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(60),
    );
    let api = format!("http://{http}/api/pipelines");
    let frames_out = || get(&api).1[0]["frames_out"].as_u64().unwrap();
    wait_until(
        "frames through the served model",
        Duration::from_secs(60),
        || frames_out() >= 10,
    );

    server.kill();
    let killed = Instant::now();
    wait_until("the pipeline to wait", Duration::from_secs(20), || {
        get(&api).1[0]["state"] == "waiting"
    });
    let (status, ready) = get(&format!("http://{http}/readyz"));
    assert_eq!(status, 503, "{ready}");
    let not_ready = &ready["not_ready"][0];
    assert_eq!(not_ready["name"], "cam", "{ready}");
    assert_eq!(not_ready["state"], "waiting", "{ready}");
    let reason = not_ready["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("127.0.0.1:{}", server.grpc_port)),
        "{reason}"
    );
    let metrics = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("visiond_remote_up{model=\"depth\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("visiond_pipeline_state{pipeline=\"cam\",state=\"waiting\"} 1"),
        "{metrics}"
    );
    let stalled_at = frames_out();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    // Nothing went through meanwhile, and the pipeline did not fail.
    assert_eq!(frames_out(), stalled_at);
    server.restart();
    wait_until(
        "frames through the server again",
        Duration::from_secs(60),
        || frames_out() > stalled_at + 10,
    );
    let (status, body) = get(&format!("http://{http}/readyz"));
    assert_eq!(status, 200, "{body}");
    let (code, log) = daemon.terminate();
    // Frames were lost to the outage, so the pipeline does not end a clean `finished`: the
    // summary says how many and why.
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("remote unavailable"), "{log}");
    // Every frame is published or counted as dropped.
    let (frames_in, out, dropped) = summary_counts(&log, "cam");
    assert_eq!(frames_in, out + dropped, "{log}");
    assert!(dropped > 0, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_slow_server_keeps_requests_and_latency_bounded_and_counts_what_timed_out() {
    let _serial = serial();
    // Every other request takes 1.5 s: past the 400 ms timeout.
    let server = MlServer::start(&[Served::depth("depth").delay(1500, 2)]);
    let models = remote_yaml("depth", &server.url(), "depth", "")
        .replace("timeout_ms: 5000", "timeout_ms: 400")
        + "    batch: { max_size: 1, max_wait_ms: 0 }\n";
    let (_dir, config) = temp_tree(
        &format!("models:\n{models}"),
        &[Pipeline::new("cam")
            .source(Source::test(96, 72).fps(15))
            .model("depth")
            .queue("{ capacity: 2, when_full: drop_oldest }")
            .file_sink_with(Path::new("/dev/null"), "format: mkv")],
    );
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    let view = engine.view();
    let remote = view.current().workers()[0]
        .remote
        .clone()
        .expect("a served model");
    let started = Instant::now();
    let mut most_in_flight = 0;
    while started.elapsed() < Duration::from_secs(8) {
        most_in_flight =
            most_in_flight.max(remote.in_flight.load(std::sync::atomic::Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(10));
    }
    let cam = engine.pipeline("cam").unwrap();
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let report = &reports[0];
    assert!(most_in_flight <= 2, "{most_in_flight} requests outstanding");
    let timeouts = remote.failures(RemoteFailure::Timeout);
    let counts = format!(
        "requests {}, failures {:?}, losses {:?}, {report}",
        remote.requests.load(std::sync::atomic::Ordering::Relaxed),
        RemoteFailure::ALL.map(|f| remote.failures(f)),
        cam.stats.losses()
    );
    assert!(timeouts >= 3, "{timeouts} timeouts: {counts}");
    // No request took much longer than its timeout: latency is bounded by it.
    let cumulative = remote.latency_cumulative();
    let bounds = visiond::runtime::remote::stats::LATENCY_BOUNDS_S;
    let within_1s = cumulative[bounds.iter().position(|&b| b == 1.0).unwrap()];
    assert_eq!(within_1s, *cumulative.last().unwrap(), "{cumulative:?}");
    // Frames of the timed-out requests are counted as such; the rest were published.
    let losses = cam.stats.losses();
    assert_eq!(
        losses.get("remote timeout").copied(),
        Some(timeouts),
        "{losses:?}"
    );
    assert!(report.frames_out > 0, "{report}");
    assert_eq!(
        report.frames_in,
        report.frames_out + report.dropped,
        "{report}"
    );
}

/// `visiond` with `args`: exit code and stderr.
fn visiond(args: &[&str], file: &Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_visiond"))
        .args(args)
        .arg("-c")
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_name_shape_datatype_or_address_is_a_clear_error_at_check_probe_and_at_run() {
    let _serial = serial();
    let server = MlServer::start(&[
        Served::depth("small").input_shape(&[-1, 3, 32, 32]),
        Served::depth("half").input("float", "FP16"),
    ]);
    let url = server.url();
    let unreachable = format!("grpc://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let models = remote_yaml("unknown", &url, "nope", "")
        + &remote_yaml("shape", &url, "small", "")
        + &remote_yaml("datatype", &url, "half", "")
        + &remote_yaml("away", &unreachable, "depth", "");
    let pipelines: Vec<Pipeline> = ["unknown", "shape", "datatype", "away"]
        .iter()
        .map(|model| {
            Pipeline::new(model)
                .source(Source::test(64, 48).fps(30).frames(5))
                .model(model)
                .jsonl(&dir.path().join(format!("{model}.jsonl")))
        })
        .collect();
    let file = write_tree(dir.path(), &format!("models:\n{models}"), &pipelines);
    let config_file = visiond::config::paths::display(&file);

    let (code, stderr) = visiond(&["check", "--probe"], &file);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = [
        format!("{config_file}: models.unknown.remote: the server at {url} has no model 'nope'"),
        format!(
            "{config_file}: models.shape.remote: model 'small' at {url} does not fit this processor: input shape: the server's model takes 'pixel_values' FP32 [-1, 3, 32, 32], visiond sends 'pixel_values' FP32 [B<=4, 3, 64, 64]"
        ),
        format!(
            "{config_file}: models.datatype.remote: model 'half' at {url} does not fit this processor: input datatype: the server's model takes 'pixel_values' FP16 [-1, 3, 64, 64], visiond sends 'pixel_values' FP32 [B<=4, 3, 64, 64]"
        ),
        format!("{config_file}: models.away.remote: cannot reach {unreachable}"),
    ];
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing: {line}\nin:\n{stderr}"
        );
    }
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.contains("4 error(s)"), "{stderr}");

    // `run`: the mismatched models fail their pipelines with the same words; the pipeline
    // whose server is away waits, its frames dropped and counted, and nothing panics.
    let config = visiond::preflight::load(&file).unwrap();
    let engine = Engine::start(&config, &runtime::loader(&config)).unwrap();
    let away = engine.pipeline("away").unwrap();
    let reports = engine.wait();
    let failed = |name: &str| -> String {
        let report = reports.iter().find(|r| r.name == name).unwrap();
        match &report.state {
            PipelineState::Failed { error } => error.clone(),
            other => panic!("{name} is {other}"),
        }
    };
    assert!(failed("unknown").contains(&format!("the server at {url} has no model 'nope'")));
    assert!(
        failed("shape")
            .contains("input shape: the server's model takes 'pixel_values' FP32 [-1, 3, 32, 32]")
    );
    assert!(
        failed("datatype").contains("input datatype: the server's model takes 'pixel_values' FP16")
    );
    let away_error = failed("away");
    assert!(away_error.contains("remote unavailable"), "{away_error}");
    assert_eq!(away.stats.losses().get("remote unavailable"), Some(&5));
}

#[test]
fn export_triton_writes_a_repository_whose_uint8_model_matches_the_local_one() {
    let _serial = serial();
    let repository = tempfile::tempdir().unwrap();
    let python = common::mlserver::venv().join("bin/python");
    let output = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/export_triton.py"))
        .arg(fixture("dpt-vit"))
        .args(["--repository"])
        .arg(repository.path())
        .args([
            "--name",
            "depth",
            "--size",
            "64x64",
            "--input",
            "uint8",
            "--max-batch",
            "4",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("input: uint8, output_name: predicted_depth__0"),
        "{stdout}"
    );
    let pbtxt = std::fs::read_to_string(repository.path().join("depth/config.pbtxt")).unwrap();
    for expected in [
        "platform: \"pytorch_libtorch\"",
        "max_batch_size: 4",
        "{ name: \"pixel_values\", data_type: TYPE_UINT8, dims: [ 3, 64, 64 ] }",
        "{ name: \"predicted_depth__0\", data_type: TYPE_FP32, dims: [ 64, 64 ] }",
        "dynamic_batching",
    ] {
        assert!(pbtxt.contains(expected), "{expected} not in:\n{pbtxt}");
    }
    // The served module normalises uint8 images itself, as visiond's processor would.
    let module = tch::CModule::load(repository.path().join("depth/1/model.pt")).unwrap();
    let images = tch::Tensor::randint(256, [2, 3, 64, 64], (tch::Kind::Uint8, tch::Device::Cpu));
    let served = tch::no_grad(|| module.forward_ts(&[&images])).unwrap();
    let loaded = visiond::models::checkpoint::open(
        &visiond::config::ModelSource::Path(fixture("dpt-vit")),
        &Default::default(),
    )
    .unwrap();
    let pixel_values = (images.to_kind(tch::Kind::Float) * (1.0 / 255.0) - 0.5) / 0.5;
    let local = tch::no_grad(|| loaded.model.forward(&pixel_values)).unwrap();
    assert_eq!(served.size(), local.size());
    let error = (&served - &local).abs().max().double_value(&[]);
    let scale = local.abs().max().double_value(&[]).max(1.0);
    assert!(error <= 1e-4 * scale, "max abs error {error:e}");
}
