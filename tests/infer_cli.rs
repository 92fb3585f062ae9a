//! `visiond infer` as a person runs it: the built binary, its exit codes, what it prints and
//! what `--save` and `--overlay` write.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
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

// --- `--image` and `--overlay` ---------------------------------------------------------------

/// Waits for the end of a one-picture GStreamer pipeline, failing the test on an error.
fn finish(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().expect("bus");
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the pipeline finished within 30 s");
    if let gst::MessageView::Error(error) = message.view() {
        panic!("GStreamer: {} ({:?})", error.error(), error.debug());
    }
    pipeline.set_state(gst::State::Null).expect("stop");
}

/// Writes uint8 [H, W, 3] RGB to a PNG with GStreamer (`appsrc ! videoconvert ! pngenc !
/// filesink`), rows padded to GStreamer's 4-byte RGB stride.
fn write_png(image: &Tensor, file: &Path) {
    gst::init().expect("gst init");
    let (height, width, _) = image.size3().expect("[H, W, 3]");
    let (height, width) = (height as usize, width as usize);
    let data = Vec::<u8>::try_from(image.contiguous().flatten(0, -1)).expect("uint8 image");
    let row = width * 3;
    let stride = (row + 3) & !3;
    let mut padded = vec![0u8; stride * height];
    for (y, line) in data.chunks_exact(row).enumerate() {
        padded[y * stride..y * stride + row].copy_from_slice(line);
    }
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={width},height={height},framerate=0/1 \
         ! videoconvert ! pngenc ! filesink name=sink"
    ))
    .expect("encode pipeline")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    pipeline
        .by_name("sink")
        .expect("sink")
        .set_property("location", file);
    let appsrc = pipeline
        .by_name("src")
        .expect("src")
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc");
    pipeline.set_state(gst::State::Playing).expect("play");
    let mut buffer = gst::Buffer::from_slice(padded);
    buffer
        .get_mut()
        .expect("writable")
        .set_pts(gst::ClockTime::ZERO);
    appsrc.push_buffer(buffer).expect("push");
    appsrc.end_of_stream().expect("eos");
    finish(&pipeline);
}

/// A PNG read back with GStreamer: width, height and packed RGB rows.
fn read_png(file: &Path) -> (usize, usize, Vec<u8>) {
    gst::init().expect("gst init");
    let pipeline = gst::parse::launch(
        "filesrc name=src ! pngdec ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink",
    )
    .expect("decode pipeline")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    pipeline
        .by_name("src")
        .expect("src")
        .set_property("location", file);
    let sink = pipeline
        .by_name("sink")
        .expect("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("play");
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_seconds(30))
        .unwrap_or_else(|| panic!("{} decodes", file.display()));
    let info = gst_video::VideoInfo::from_caps(sample.caps().expect("caps")).expect("video caps");
    let (width, height) = (info.width() as usize, info.height() as usize);
    let stride = info.stride()[0] as usize;
    let map = sample
        .buffer()
        .expect("buffer")
        .map_readable()
        .expect("map");
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        data.extend_from_slice(&map[y * stride..y * stride + width * 3]);
    }
    drop(map);
    pipeline.set_state(gst::State::Null).expect("stop");
    (width, height, data)
}

/// The uint8 image and the transformers (PIL processor) `pixel_values` of a processors case.
fn processor_case(case: &str) -> (Tensor, Tensor) {
    let file = fixtures()
        .join("processors")
        .join(format!("{case}.safetensors"));
    (tensor(&file, "image"), tensor(&file, "pixel_values"))
}

/// One uint8 step after rescale and normalize, as tests/processing_parity.rs bounds it:
/// 1/255/std, for the depth-anything processor's smallest std (ImageNet, 0.224).
fn one_uint8_step(model: &str) -> f64 {
    let text = std::fs::read_to_string(model_dir(model).join("preprocessor_config.json"))
        .expect("preprocessor_config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("json");
    let min_std = config["image_std"]
        .as_array()
        .expect("image_std")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .fold(f64::INFINITY, f64::min);
    config["rescale_factor"].as_f64().expect("rescale_factor") / min_std
}

/// The depth-anything fixture's `preprocessor_config.json` is the `depth_anything` processor of
/// tests/fixtures/processors (56, keep aspect, multiple of 14, bicubic, ImageNet), so an image
/// written from a processors case must come out of `--image` as transformers' `pixel_values`.
/// Widths 200, 131 and 27 cover unpadded and padded GStreamer row strides.
#[test]
fn image_is_preprocessed_as_the_transformers_processor_does() {
    let temp = tempfile::tempdir().expect("tempdir");
    let model = model_dir("depth-anything");
    let bound = one_uint8_step("depth-anything");
    for case in [
        "depth_anything_shrink_photo",
        "depth_anything_shrink_pattern",
        "depth_anything_enlarge",
    ] {
        let (image, reference) = processor_case(case);
        let png = temp.path().join(format!("{case}.png"));
        write_png(&image, &png);
        let saved = temp.path().join(format!("{case}.safetensors"));
        let (code, stdout, stderr) = run(&mut visiond(&[
            "--model",
            path_str(&model),
            "--image",
            path_str(&png),
            "--device",
            "cpu",
            "--save",
            path_str(&saved),
        ]));
        assert_eq!(code, 0, "{case}: {stderr}");
        let got = tensor(&saved, "pixel_values");
        assert_eq!(got.size(), reference.size(), "{case}");
        assert_eq!(got.kind(), Kind::Float);
        let error = (&got - &reference).abs().max().double_value(&[]);
        println!("{case}: max error {error:.3e}, bound {bound:.3e}");
        assert!(
            error <= bound + 1e-6,
            "{case}: pixel_values differ from transformers by {error}, more than one uint8 step ({bound})"
        );
        let (_, _, height, width) = reference.size4().expect("[1, 3, h, w]");
        let (image_h, image_w, _) = image.size3().expect("[H, W, 3]");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines[1],
            format!(
                "input: pixel_values [1, 3, {height}, {width}] from {} ({image_w}x{image_h} RGB, processor: {})",
                png.display(),
                model.join("preprocessor_config.json").display()
            ),
            "{stdout}"
        );
        // The saved output is the model's answer to exactly the saved input.
        let depth = tensor(&saved, "predicted_depth");
        assert_eq!(depth.size()[0], 1);
    }
}

/// Runs `--image IMAGE --overlay OUT` with extra flags; returns the PNG read back.
fn overlay(model: &str, image: &Path, out: &Path, extra: &[&str]) -> (usize, usize, Vec<u8>) {
    let model = model_dir(model);
    let mut args = vec![
        "--model",
        path_str(&model),
        "--image",
        path_str(image),
        "--device",
        "cpu",
        "--overlay",
        path_str(out),
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(&mut visiond(&args));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("PNG written to {}\n", out.display())),
        "{stdout}"
    );
    read_png(out)
}

#[test]
fn overlay_png_per_mode() {
    let temp = tempfile::tempdir().expect("tempdir");
    // 134x200 coffee photo crop.
    let (image, _) = processor_case("depth_anything_shrink_photo");
    let (h, w, _) = image.size3().expect("[H, W, 3]");
    let (h, w) = (h as usize, w as usize);
    let source = Vec::<u8>::try_from(image.contiguous().flatten(0, -1)).expect("uint8");
    let png = temp.path().join("coffee.png");
    write_png(&image, &png);

    let blend = overlay("depth-anything", &png, &temp.path().join("blend.png"), &[]);
    let map = overlay(
        "depth-anything",
        &png,
        &temp.path().join("map.png"),
        &["--mode", "map_only", "--range", "per_frame"],
    );
    let side = overlay(
        "depth-anything",
        &png,
        &temp.path().join("side.png"),
        &["--mode", "side_by_side"],
    );
    assert_eq!((blend.0, blend.1), (w, h));
    assert_eq!((map.0, map.1), (w, h));
    assert_eq!(
        (side.0, side.1),
        (2 * w, h),
        "side_by_side doubles the width"
    );
    assert_ne!(blend.2, map.2, "blend must differ from map_only");
    assert_ne!(blend.2, source, "blend must differ from the image");
    // side_by_side: the image on the left, unchanged (PNG is lossless), the map on the right
    // (`ema` on one frame is `per_frame`, so it is the map_only picture).
    let row = w * 3;
    for y in 0..h {
        let line = &side.2[y * 2 * row..(y + 1) * 2 * row];
        assert_eq!(
            &line[..row],
            &source[y * row..(y + 1) * row],
            "row {y} left"
        );
        assert_eq!(
            &line[row..],
            &map.2[y * row..(y + 1) * row],
            "row {y} right"
        );
    }
    // Another colour map and --invert change the picture; alpha 0 leaves the image as it is.
    let gray = overlay(
        "depth-anything",
        &png,
        &temp.path().join("gray.png"),
        &["--mode", "map_only", "--colormap", "grayscale"],
    );
    assert!(
        gray.2.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]),
        "grayscale map has R = G = B"
    );
    let inverted = overlay(
        "depth-anything",
        &png,
        &temp.path().join("inverted.png"),
        &["--mode", "map_only", "--colormap", "grayscale", "--invert"],
    );
    assert!(
        gray.2
            .iter()
            .zip(&inverted.2)
            .all(|(a, b)| (i32::from(*a) + i32::from(*b) - 255).abs() <= 1),
        "--invert mirrors the grayscale map"
    );
    let unblended = overlay(
        "depth-anything",
        &png,
        &temp.path().join("alpha0.png"),
        &["--alpha", "0"],
    );
    assert_eq!(unblended.2, source, "alpha 0 shows only the image");
}

#[test]
fn overlay_for_segmentation_and_classification() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (image, _) = processor_case("beit_shrink_text"); // 120x190 page crop
    let (h, w, _) = image.size3().expect("[H, W, 3]");
    let (h, w) = (h as usize, w as usize);
    let source = Vec::<u8>::try_from(image.contiguous().flatten(0, -1)).expect("uint8");
    let png = temp.path().join("page.png");
    write_png(&image, &png);

    let segmented = overlay(
        "dpt-ade",
        &png,
        &temp.path().join("ade.png"),
        &["--mode", "side_by_side"],
    );
    assert_eq!((segmented.0, segmented.1), (2 * w, h));

    // Classification: the image as the daemon publishes it, the label drawn by textoverlay at
    // the top left; the rest of the picture is untouched.
    let out = temp.path().join("dit.png");
    let (code, stdout, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dit")),
        "--image",
        path_str(&png),
        "--device",
        "cpu",
        "--overlay",
        path_str(&out),
    ]));
    assert_eq!(code, 0, "{stderr}");
    let labels = ["letter", "form", "email", "handwritten"];
    let line = stdout
        .lines()
        .find(|l| l.starts_with("overlay: label \""))
        .unwrap_or_else(|| panic!("no overlay line in {stdout}"));
    assert!(
        labels.iter().any(|l| line.contains(&format!("\"{l} "))),
        "{line}"
    );
    assert!(line.ends_with(&format!("{w}x{h} PNG written to {}", out.display())));
    let (width, height, labelled) = read_png(&out);
    assert_eq!((width, height), (w, h));
    let row = w * 3;
    let changed_rows: Vec<usize> = (0..h)
        .filter(|y| labelled[y * row..(y + 1) * row] != source[y * row..(y + 1) * row])
        .collect();
    assert!(!changed_rows.is_empty(), "the label is drawn");
    assert!(
        changed_rows[0] < h / 4 && *changed_rows.last().unwrap() < h / 2,
        "the label is at the top: rows {changed_rows:?}"
    );
}

#[test]
fn bad_image_exits_2_naming_the_file() {
    let temp = tempfile::tempdir().expect("tempdir");
    let model = model_dir("depth-anything");
    let missing = temp.path().join("cat.png");
    let (code, stdout, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model),
        "--image",
        path_str(&missing),
    ]));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("error: --image {}: no such file\n", missing.display())
    );

    let text = temp.path().join("notes.png");
    std::fs::write(&text, "these are notes, not a picture\n".repeat(20)).expect("write");
    let (code, stdout, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model),
        "--image",
        path_str(&text),
    ]));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    let prefix = format!(
        "error: --image {}: cannot be decoded as an image: ",
        text.display()
    );
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A truncated PNG: the right signature, then nothing decodable.
    let (image, _) = processor_case("depth_anything_enlarge");
    let good = temp.path().join("good.png");
    write_png(&image, &good);
    let bytes = std::fs::read(&good).expect("read");
    let truncated = temp.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).expect("write");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model),
        "--image",
        path_str(&truncated),
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: --image {}: ", truncated.display())),
        "{stderr}"
    );
}

#[test]
fn overlay_flags_are_checked() {
    let temp = tempfile::tempdir().expect("tempdir");
    let model = model_dir("depth-anything");
    let (image, _) = processor_case("depth_anything_enlarge");
    let png = temp.path().join("small.png");
    write_png(&image, &png);
    let base = ["--model", path_str(&model), "--image", path_str(&png)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--overlay", "out.jpg"],
            "error: --overlay out.jpg: the overlay is written as PNG; give a file name ending in .png\n",
        ),
        (
            vec!["--overlay", "/no/such/dir/out.png"],
            "error: --overlay /no/such/dir/out.png: folder /no/such/dir does not exist\n",
        ),
        (vec!["--mode", "map_only"], "--overlay"),
        (
            vec!["--overlay", "o.png", "--mode", "sideways"],
            "side_by_side",
        ),
        (
            vec!["--overlay", "o.png", "--alpha", "1.5"],
            "between 0 and 1",
        ),
        (
            vec!["--overlay", "o.png", "--range", "5,1"],
            "lower bound 5 must be below upper bound 1",
        ),
        (
            vec!["--overlay", "o.png", "--range", "near"],
            "per_frame, ema or LO,HI",
        ),
        (vec!["--overlay", "o.png", "--colormap", "jet"], "viridis"),
    ];
    for (extra, message) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(&extra);
        let (code, stdout, stderr) = run(visiond(&args).current_dir(temp.path()));
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert_eq!(stdout, "");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }
    // --overlay needs an image to draw on, not a tensor.
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model),
        "--pixel-values",
        path_str(&case_file("depth-anything", "square")),
        "--overlay",
        "out.png",
    ]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: the argument '--pixel-values <FILE.safetensors>' cannot be used with '--overlay <OUT.png>'"),
        "{stderr}"
    );
    assert!(!temp.path().join("o.png").exists());
}

#[test]
fn image_with_torchscript_and_no_processor_exits_2() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (image, _) = processor_case("depth_anything_enlarge");
    let png = temp.path().join("small.png");
    write_png(&image, &png);
    let dir = model_dir("torchscript-depth");
    let (code, stdout, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&dir),
        "--task",
        "depth",
        "--image",
        path_str(&png),
        "--device",
        "cpu",
    ]));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "error: {}: no preprocessor_config.json and no built-in processor for architecture 'TorchScript'",
            dir.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("; or pass an already preprocessed tensor with --pixel-values\n"),
        "{stderr}"
    );
}

#[test]
fn save_after_a_center_crop_writes_the_cropped_pixel_values() {
    // dinov2-cls's processor resizes then center-crops: a strided view of the resized image.
    let temp = tempfile::tempdir().expect("tempdir");
    let save = temp.path().join("out.safetensors");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/coffee.png");
    let (code, _, stderr) = run(&mut visiond(&[
        "--model",
        path_str(&model_dir("dinov2-cls")),
        "--image",
        path_str(&image),
        "--save",
        path_str(&save),
    ]));
    assert_eq!(code, 0, "{stderr}");
    let pixel_values = tensor(&save, "pixel_values");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("dinov2-cls").join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let crop = &config["crop_size"];
    assert_eq!(
        pixel_values.size(),
        [
            1,
            3,
            crop["height"].as_i64().unwrap(),
            crop["width"].as_i64().unwrap()
        ]
    );
}
