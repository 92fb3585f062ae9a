//! `visiond infer` as a person runs it: the built binary, its exit codes, what it prints and
//! what `--save` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn case_file(model: &str, case: &str) -> PathBuf {
    fixtures()
        .join("reference")
        .join(model)
        .join(format!("{case}.safetensors"))
}

/// `visiond infer …` with a clean hub environment: the cache and offline flag are set on the
/// child only, never on the test process (tests run in parallel threads).
fn visiond(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_visiond"));
    command
        .arg("infer")
        .args(args)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG");
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run visiond");
    (
        status.code().expect("exit code"),
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn tensor(file: &Path, name: &str) -> Tensor {
    Tensor::read_safetensors(file)
        .expect("safetensors")
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{} has no {name}", file.display()))
}

fn assert_close(actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.size(), expected.size());
    assert_eq!(actual.kind(), Kind::Float);
    let scale = expected.abs().max().double_value(&[]).max(1e-6);
    let diff = (actual - expected).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4 * scale,
        "max abs difference {diff} exceeds 1e-4 relative to {scale}"
    );
}

/// Runs `model` on a reference case with `--save`, checks the exit code, and checks that the
/// saved input is the reference input and the saved output matches the reference output.
fn infer_and_compare(model: &str, case: &str, output: &str, extra: &[&str]) -> String {
    infer_and_compare_with(model, model, case, output, extra)
}

/// As [`infer_and_compare`], for a model whose reference cases are another model's.
fn infer_and_compare_with(
    model: &str,
    reference: &str,
    case: &str,
    output: &str,
    extra: &[&str],
) -> String {
    let temp = tempfile::tempdir().expect("tempdir");
    let saved = temp.path().join("out.safetensors");
    let input = case_file(reference, case);
    let dir = model_dir(model);
    let mut args = vec![
        "--model",
        path_str(&dir),
        "--pixel-values",
        path_str(&input),
        "--device",
        "cpu",
        "--save",
        path_str(&saved),
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(&mut visiond(&args));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        tensor(&saved, "pixel_values").equal(&tensor(&input, "pixel_values")),
        "saved pixel_values differ from the input"
    );
    assert_close(&tensor(&saved, output), &tensor(&input, output));
    assert!(
        stdout.ends_with(&format!(
            "saved pixel_values and {output} to {}\n",
            saved.display()
        )),
        "{stdout}"
    );
    stdout
}

/// A safetensors file with one tensor.
fn write_tensor(dir: &Path, name: &str, tensor: &Tensor) -> PathBuf {
    let file = dir.join(format!("{name}.safetensors"));
    Tensor::write_safetensors(&[(name, tensor)], &file).expect("write");
    file
}

#[test]
fn depth_summary_and_saved_output() {
    let stdout = infer_and_compare("dpt-vit", "native", "predicted_depth", &[]);
    let input = case_file("dpt-vit", "native");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("model: dpt-vit (DPTForDepthEstimation, depth) on cpu f32")
    );
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "input: pixel_values [1, 3, 64, 64] from {}",
                input.display()
            )
            .as_str()
        )
    );
    assert_eq!(lines.next(), Some("predicted_depth [1, 64, 64]"));
    // cases.json: min 0.0, mean 0.67209, max 2.314185.
    assert_eq!(
        lines.next(),
        Some("  image 0: 64x64 min 0.0000 mean 0.6721 max 2.3142")
    );
}

#[test]
fn sharded_checkpoint_runs_like_the_single_file() {
    // Same weights as dpt-vit, split over three shards and an index.
    infer_and_compare_with(
        "dpt-vit-sharded",
        "dpt-vit",
        "batch2",
        "predicted_depth",
        &[],
    );
}

#[test]
fn classification_summary_lists_labels() {
    let stdout = infer_and_compare("dit", "native", "logits", &["--top-k", "2"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "model: dit (BeitForImageClassification, classification) on cpu f32"
    );
    assert_eq!(lines[2], "logits [1, 4]: top 2 of 4 classes (softmax)");
    assert_eq!(lines[3], "  image 0:");
    // The two lines are "    0.xxxx  label (id)", best first, labels from id2label.
    let labels = ["letter (0)", "form (1)", "email (2)", "handwritten (3)"];
    let scores: Vec<f64> = lines[4..6]
        .iter()
        .map(|line| {
            let (score, label) = line.trim().split_once("  ").expect("score  label");
            assert!(labels.contains(&label), "{line}");
            score.parse().expect("score")
        })
        .collect();
    assert!(scores[0] >= scores[1] && scores[1] > 0.0, "{scores:?}");
    assert_eq!(lines.len(), 7, "{stdout}");
}

#[test]
fn segmentation_summary_lists_class_shares() {
    let stdout = infer_and_compare("dpt-ade", "native", "logits", &[]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "model: dpt-ade (DPTForSemanticSegmentation, segmentation) on cpu f32"
    );
    assert_eq!(
        lines[2],
        "logits [1, 5, 64, 64]: 5 classes, class map 64x64; top 5 classes by pixel share"
    );
    let shares: Vec<f64> = lines[4..lines.len() - 1]
        .iter()
        .map(|line| {
            let share = line.trim().split_once('%').expect("share%").0;
            share.parse().expect("share")
        })
        .collect();
    let total: f64 = shares.iter().sum();
    assert!((total - 100.0).abs() < 0.5, "{stdout}");
}

#[test]
fn torchscript_with_declared_task() {
    let stdout = infer_and_compare(
        "torchscript-depth",
        "non_square",
        "predicted_depth",
        &["--task", "depth"],
    );
    assert!(
        stdout.starts_with("model: torchscript-depth (TorchScript, depth) on cpu f32\n"),
        "{stdout}"
    );
}

#[test]
fn input_size_the_model_cannot_take_exits_2() {
    let temp = tempfile::tempdir().expect("tempdir");
    let input = write_tensor(
        temp.path(),
        "pixel_values",
        &Tensor::zeros([1, 3, 50, 50], (Kind::Float, Device::Cpu)),
    );
    let (code, stdout, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dpt-vit")),
        "--pixel-values",
        path_str(&input),
        "--device",
        "cpu",
    ]));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: DPTForDepthEstimation: input 50x50 not accepted: height and width must be positive multiples of the patch size 16\n"
    );
}

#[test]
fn malformed_pixel_values_exit_2() {
    let temp = tempfile::tempdir().expect("tempdir");
    let model = model_dir("dpt-vit");
    let cases = [
        (
            write_tensor(
                temp.path(),
                "pixel_values",
                &Tensor::zeros([3, 64, 64], (Kind::Float, Device::Cpu)),
            ),
            "pixel_values has shape [3, 64, 64]; expected [B, 3, H, W]",
        ),
        (
            write_tensor(
                temp.path(),
                "image",
                &Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)),
            ),
            "no tensor named pixel_values (found: image)",
        ),
    ];
    for (file, message) in cases {
        let (code, _, stderr) = run(&mut visiond(&[
            "--model",
            path_str(&model),
            "--pixel-values",
            path_str(&file),
        ]));
        assert_eq!(code, 2);
        assert_eq!(
            stderr,
            format!("error: --pixel-values {}: {message}\n", file.display())
        );
    }
    let missing = temp.path().join("missing.safetensors");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model),
        "--pixel-values",
        path_str(&missing),
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        format!(
            "error: --pixel-values {}: no such file\n",
            missing.display()
        )
    );
}

#[test]
fn image_input_is_not_available_yet() {
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dpt-vit")),
        "--image",
        "cat.png",
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: --image cat.png: image preprocessing is not available yet; pass an already preprocessed tensor with --pixel-values FILE.safetensors (tensor `pixel_values`, [B, 3, H, W] float32)\n"
    );
}

#[test]
fn model_that_is_neither_folder_nor_hub_id_exits_2() {
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        "./models/dpt",
        "--pixel-values",
        path_str(&case_file("dpt-vit", "native")),
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: --model ./models/dpt: no such file or folder, and not a Hugging Face hub id (org/name)\n"
    );
}

#[test]
fn bin_only_checkpoint_exits_2() {
    let dir = model_dir("dpt-vit-bin-only");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&dir),
        "--pixel-values",
        path_str(&case_file("dpt-vit", "native")),
    ]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(&format!(
            "error: {}: only PyTorch pickle weights (pytorch_model.bin) found, and visiond loads safetensors only\n",
            dir.join("pytorch_model.bin").display()
        )),
        "{stderr}"
    );
}

#[test]
fn torchscript_without_task_exits_2() {
    let dir = model_dir("torchscript-depth");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&dir),
        "--pixel-values",
        path_str(&case_file("torchscript-depth", "native")),
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        format!(
            "error: {}: a TorchScript model needs its task declared: depth, segmentation or classification (--task, or `task:` in the config)\n",
            dir.join("model.pt").display()
        )
    );
}

#[test]
fn hub_id_offline_miss_exits_2_with_the_fetch_command() {
    let home = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr) = run(visiond(&[
        "--model",
        "Intel/dpt-large",
        "--pixel-values",
        path_str(&case_file("dpt-vit", "native")),
    ])
    .env("HF_HOME", home.path())
    .env("HF_HUB_OFFLINE", "1"));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    let cache = home.path().join("hub");
    assert_eq!(
        stderr,
        format!(
            "error: Intel/dpt-large (revision main) is not available: not in the cache ({repo} does not exist), and HF_HUB_OFFLINE is set, so it was not downloaded\n  \
             looked in the Hugging Face cache at {cache}\n  \
             fetch it with: hf download Intel/dpt-large --revision main --include '*.json' '*.safetensors'\n",
            repo = cache.join("models--Intel--dpt-large").display(),
            cache = cache.display(),
        )
    );
}

#[test]
fn hub_id_found_in_the_cache() {
    let home = tempfile::tempdir().expect("tempdir");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = home.path().join("hub/models--visiond--dit");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo.join("refs/refs/pr")).expect("refs");
    // A pull-request revision, stored the way huggingface_hub stores it: refs/refs/pr/1.
    std::fs::write(repo.join("refs/refs/pr/1"), commit).expect("ref");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir("dit").join(file), snapshot.join(file)).expect("copy");
    }
    let (code, stdout, stderr) = run(visiond(&[
        "--model",
        "visiond/dit",
        "--revision",
        "refs/pr/1",
        "--pixel-values",
        path_str(&case_file("dit", "native")),
        "--device",
        "cpu",
    ])
    .env("HF_HOME", home.path())
    .env("HF_HUB_OFFLINE", "1"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with(
            "model: visiond/dit (BeitForImageClassification, classification) on cpu f32\n"
        ),
        "{stdout}"
    );
}

#[test]
fn save_into_missing_folder_exits_2_before_loading() {
    let temp = tempfile::tempdir().expect("tempdir");
    let save = temp.path().join("no/such/dir/out.safetensors");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dpt-vit")),
        "--pixel-values",
        path_str(&case_file("dpt-vit", "native")),
        "--save",
        path_str(&save),
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        format!(
            "error: --save {}: folder {} does not exist\n",
            save.display(),
            temp.path().join("no/such/dir").display()
        )
    );
}

#[test]
fn unavailable_device_exits_2() {
    if tch::Cuda::device_count() > 7 {
        return; // a machine with 8+ GPUs can run this; nothing to check there.
    }
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dpt-vit")),
        "--pixel-values",
        path_str(&case_file("dpt-vit", "native")),
        "--device",
        "cuda:7",
    ]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: device cuda:7 requested but "),
        "{stderr}"
    );
}

/// The bar: every architecture, through the command users run, matches transformers.
#[test]
fn every_architecture_matches_transformers_through_infer_save() {
    let cases = [
        ("dpt-vit", "odd_grid", "predicted_depth"),
        ("dpt-vit-add", "non_square", "predicted_depth"),
        ("dpt-vit-ignore", "batch2", "predicted_depth"),
        ("dpt-hybrid", "native", "predicted_depth"),
        ("dpt-dinov2", "non_square", "predicted_depth"),
        ("dpt-ade", "larger", "logits"),
        ("dit", "non_square", "logits"),
        ("beit-relpos", "larger", "logits"),
        ("dinov2-cls", "other_grid", "logits"),
        ("depth-anything", "non_square", "predicted_depth"),
    ];
    for (model, case, output) in cases {
        infer_and_compare(model, case, output, &[]);
    }
}
