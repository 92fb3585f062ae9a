//! `visiond bench` as a user runs it, on the fixture checkpoints (CPU): the JSON lines it
//! prints, the table, and the errors for bad flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_visiond"))
        .arg("bench")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run visiond bench")
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

#[test]
fn json_has_one_line_per_dtype_and_batch_with_positive_numbers() {
    let model = fixture("dit");
    let output = bench(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--dtype",
        "f32,bf16",
        "--batch",
        "3,1",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    let lines = json_lines(&output);
    let asked: Vec<(String, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["dtype"].as_str().unwrap().to_owned(),
                l["batch"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("f32".to_owned(), 1),
            ("f32".to_owned(), 3),
            ("bf16".to_owned(), 1),
            ("bf16".to_owned(), 3)
        ]
    );
    for line in &lines {
        assert_eq!(line["tool"], "visiond");
        assert_eq!(line["model"], "dit");
        assert_eq!(line["architecture"], "BeitForImageClassification");
        assert_eq!(line["device"], "cpu");
        assert_eq!(line["cuda_graphs"], false);
        assert_eq!(line["threads"], 1);
        assert_eq!(line["iters"], 3);
        // The fixture's image processor makes 64x64 inputs of a square frame.
        assert_eq!(
            (line["height"].as_i64(), line["width"].as_i64()),
            (Some(64), Some(64))
        );
        for key in [
            "ms_p50",
            "ms_p90",
            "img_per_s",
            "gflop_per_img",
            "gflop_per_s",
        ] {
            let value = line[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} in {line}"));
            assert!(
                value > 0.0 && value.is_finite(),
                "{key} = {value} in {line}"
            );
        }
        assert!(line["ms_p90"].as_f64() >= line["ms_p50"].as_f64(), "{line}");
        let batch = line["batch"].as_f64().unwrap();
        let expected = batch * 1e3 / line["ms_p50"].as_f64().unwrap();
        assert!((line["img_per_s"].as_f64().unwrap() - expected).abs() < 1e-6 * expected);
    }
    // The FLOPs of one 64x64 image of the fixture DiT: 4 layers of width 32 over 17 tokens,
    // patch embedding and classifier (2 per multiply-add), whatever the dtype.
    let gflop = lines[0]["gflop_per_img"].as_f64().unwrap();
    assert!((gflop - 0.002048768).abs() < 1e-12, "{gflop}");
    assert_eq!(lines[2]["gflop_per_img"], lines[0]["gflop_per_img"]);
}

#[test]
fn a_size_can_be_given_and_the_table_is_for_people() {
    let model = fixture("depth-anything");
    let output = bench(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch",
        "2",
        "--size",
        "42x70",
        "--iters",
        "2",
        "--warmup",
        "0",
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("model") && lines[0].contains("img/s"),
        "{stdout}"
    );
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &fields[..5],
        ["depth-anything", "cpu", "f32", "2", "42x70"],
        "{stdout}"
    );
}

#[test]
fn a_trace_is_written_for_the_largest_batch() {
    let model = fixture("dinov2-cls");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let output = bench(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch",
        "1,2",
        "--iters",
        "1",
        "--json",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(json_lines(&output).len(), 2);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "aten::scaled_dot_product_attention"),
        "the trace shows the model's operators"
    );
}

#[test]
fn bad_flags_are_refused_with_what_to_write() {
    let model = fixture("dit");
    let model = model.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--device", "cpu"], "--model <DIR|HUB_ID>"),
        (&["--model", model, "--size", "64"], "'64' is not HxW"),
        (&["--model", model, "--batch", "0"], "0 is not in 1..=4096"),
        (&["--model", model, "--dtype", "f64"], "unknown dtype 'f64'"),
        (&["--model", "/nonexistent/model"], "no such file or folder"),
    ];
    for (args, expected) in cases {
        let output = bench(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    // An input the model cannot take is the model's own error.
    let output = bench(&[
        "--model", model, "--device", "cpu", "--size", "64x72", "--batch", "1",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("input 64x72 not accepted: height and width must be positive multiples of the patch size 16"),
        "{stderr}"
    );
}

#[test]
fn streams_through_a_model_report_the_workers_share_and_the_steady_rate() {
    let model = fixture("dpt-hybrid");
    let output = bench(&[
        "--streams",
        "2",
        "--frames",
        "20",
        "--resolution",
        "320x240",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch",
        "2",
        "--json",
    ]);
    let report = &json_report(&output);
    assert_eq!(report["total_frames_out"], 40, "{report}");
    assert_eq!(report["streams"].as_array().unwrap().len(), 2);
    // Two streams, batches of at most two: every batch holds one or two frames.
    let batch = report["mean_batch"].as_f64().unwrap();
    assert!((1.0..=2.0).contains(&batch), "{report}");
    // The model is the slow part on this CPU: its worker is busy most of the window, never
    // more than all of it.
    let busy = report["worker_busy_percent"].as_f64().unwrap();
    assert!(busy > 10.0 && busy <= 100.5, "{report}");
    assert!(report["steady_fps"].as_f64().unwrap() > 0.0, "{report}");
    // On the CPU the tensors read GStreamer's memory in place: no copy on the way in.
    assert_eq!(report["host_copies_per_frame"], 0.0, "{report}");
    // Nothing was converted on a CUDA device, so neither way of converting is counted.
    assert!(report["fused_conversions"].is_null(), "{report}");
    assert!(report["tensor_op_conversions"].is_null(), "{report}");
    // The GPU's utilisation where nvidia-smi answers, nothing where it does not.
    assert_eq!(
        report["gpu_busy_percent"].is_number(),
        has_nvidia_smi(),
        "{report}"
    );
}

/// `bench --streams --json` prints one (indented) object.
fn json_report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn has_nvidia_smi() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn streams_without_a_model_have_no_worker_figures() {
    let output = bench(&[
        "--streams",
        "2",
        "--frames",
        "10",
        "--resolution",
        "320x240",
        "--model",
        "none",
        "--json",
    ]);
    let report = &json_report(&output);
    assert_eq!(report["total_frames_out"], 20, "{report}");
    assert!(report["mean_batch"].is_null(), "{report}");
    assert!(report["worker_busy_percent"].is_null(), "{report}");
    assert!(report["host_copies_per_frame"].is_null(), "{report}");
}

#[test]
fn streams_write_a_trace_of_their_window_or_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("streams.json");
    let streams = [
        "--streams",
        "2",
        "--frames",
        "40",
        "--resolution",
        "160x120",
        "--model",
        "none",
        "--json",
    ];
    let output = bench(&[&streams[..], &["--trace", trace.to_str().unwrap()]].concat());
    assert_eq!(json_report(&output)["total_frames_out"], 80);
    // A Chrome trace (on CUDA it holds every kernel of the process; here the profiler's own
    // records).
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(json["traceEvents"].is_array(), "{json}");
    // A folder that does not exist is refused before anything runs.
    let missing = dir.path().join("no/such/folder/t.json");
    let output = bench(&[&streams[..], &["--trace", missing.to_str().unwrap()]].concat());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("folder does not exist"), "{stderr}");
    assert!(output.stdout.is_empty());
}
