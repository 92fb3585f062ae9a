//! `Preprocessor` against the transformers 5.17 PIL image processors
//! (`tests/fixtures/processors`, made by `tools/make_fixtures.py --processors`): every element of
//! `pixel_values` within one uint8 step of the reference, i.e. rescale/std.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use visiond::processing::{Preprocessor, ProcessingError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/processors")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

fn load(file: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .into_iter()
        .collect()
}

/// A model folder holding the processor's `preprocessor_config.json` as saved by transformers.
fn model_dir(processor: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        serde_json::to_string_pretty(&processor["preprocessor_config"]).unwrap(),
    )
    .unwrap();
    dir
}

fn preprocessor(processor: &Value, size_override: Option<[u32; 2]>) -> Preprocessor {
    let dir = model_dir(processor);
    let arch = processor["architecture"].as_str().unwrap();
    Preprocessor::from_model_dir(dir.path(), arch, size_override).unwrap()
}

fn size_override(case: &Value) -> Option<[u32; 2]> {
    case["size_override"]
        .as_array()
        .map(|v| [v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32])
}

/// One uint8 step after rescale and normalize: the bound the issue sets (1/255/std).
fn bound(processor: &Value) -> f64 {
    let config = &processor["preprocessor_config"];
    let step = if config["do_rescale"].as_bool().unwrap_or(true) {
        config["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0)
    } else {
        1.0
    };
    let min_std = config["image_std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    step / min_std
}

/// The CPU, and the first GPU where there is one: the processors run on the model's device.
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    devices
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let a = a.to_device(Device::Cpu);
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Fraction of elements more than half a uint8 step away (i.e. a different PIL pixel value).
fn off_by_a_step(a: &Tensor, b: &Tensor, step: f64) -> f64 {
    (a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .gt(step / 2.0)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

#[test]
fn every_case_within_one_uint8_step() {
    let meta = cases();
    let mut failures = Vec::new();
    for device in devices() {
        println!(
            "{:<30} {:>15} {:>11} {:>11} {:>9} {:>10}   on {device:?}",
            "case", "shape", "max error", "bound", "in steps", "off by 1"
        );
        for case in meta["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let processor = &meta["processors"][case["processor"].as_str().unwrap()];
            let pre = preprocessor(processor, size_override(case));
            let data = load(case["file"].as_str().unwrap());
            let image = data["image"].to_device(device);
            let reference = &data["pixel_values"];
            let got = pre.run(std::slice::from_ref(&image), Kind::Float).unwrap();
            assert_eq!(got.device(), device);
            let error = max_abs_diff(&got, reference);
            let limit = bound(processor);
            println!(
                "{name:<30} {:>15} {error:>11.3e} {limit:>11.3e} {:>9.3} {:>9.3}%",
                format!("{:?}", got.size()),
                error / limit,
                100.0 * off_by_a_step(&got, reference, limit)
            );
            // 1e-5: f32 rounding of rescale and normalize on top of the one-step bound.
            if error > limit + 1e-5 {
                failures.push(format!(
                    "{name} on {device:?}: max error {error:.4e} > bound {limit:.4e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn output_sizes_match_transformers() {
    let meta = cases();
    for (name, processor) in meta["processors"].as_object().unwrap() {
        // The override processor is the `dpt` config with input_size; its probes were made
        // with a processor built at that size.
        let (processor, over) = if name == "dpt_override" {
            (&meta["processors"]["dpt"], Some([40, 24]))
        } else {
            (processor, None)
        };
        let pre = preprocessor(processor, over);
        for probe in meta["processors"][name]["output_sizes"].as_array().unwrap() {
            let frame = probe["frame"].as_array().unwrap();
            let (h, w) = (frame[0].as_i64().unwrap(), frame[1].as_i64().unwrap());
            let got = pre.output_size(h, w);
            match probe["processed"].as_array() {
                Some(p) => assert_eq!(
                    got,
                    (p[0].as_i64().unwrap(), p[1].as_i64().unwrap()),
                    "{name}: frame {h}x{w}"
                ),
                None => {
                    // transformers raises for this frame; so must run (no panic).
                    let frame = Tensor::zeros([h, w, 3], (Kind::Uint8, Device::Cpu));
                    let e = pre.run(&[frame], Kind::Float).unwrap_err();
                    assert!(
                        matches!(e, ProcessingError::Frame { .. }),
                        "{name} {h}x{w}: {e}"
                    );
                }
            }
        }
    }
}

/// Frames of different sizes whose processed sizes agree form one batch; each element equals the
/// frame's own reference.
#[test]
fn batches_of_mixed_frame_sizes() {
    let meta = cases();
    let groups: [(&str, &[&str]); 3] = [
        (
            "dpt",
            &[
                "dpt_shrink_photo",
                "dpt_shrink_pattern",
                "dpt_shrink_photo",
                "dpt_enlarge",
            ],
        ),
        (
            "beit",
            &["beit_shrink_text", "beit_enlarge", "beit_shrink_pattern"],
        ),
        (
            "bit",
            &[
                "bit_landscape",
                "bit_landscape",
                "bit_portrait",
                "bit_enlarge",
                "bit_pattern",
            ],
        ),
    ];
    for (processor, names) in groups {
        let processor = &meta["processors"][processor];
        let pre = preprocessor(processor, None);
        let data: Vec<_> = names
            .iter()
            .map(|n| load(&format!("{n}.safetensors")))
            .collect();
        // On the GPU where there is one: batching is what the inference device sees.
        let device = *devices().last().unwrap();
        let frames: Vec<Tensor> = data.iter().map(|d| d["image"].to_device(device)).collect();
        let batch = pre.run(&frames, Kind::Float).unwrap();
        assert_eq!(batch.size()[0], names.len() as i64);
        for (i, (name, d)) in names.iter().zip(&data).enumerate() {
            let error = max_abs_diff(&batch.narrow(0, i as i64, 1), &d["pixel_values"]);
            println!("batch {i} {name}: max error {error:.3e}");
            assert!(
                error <= bound(processor) + 1e-5,
                "{name} in a batch: {error}"
            );
        }
    }
}

#[test]
fn half_precision_output() {
    let meta = cases();
    let processor = &meta["processors"]["depth_anything"];
    let pre = preprocessor(processor, None);
    let data = load("depth_anything_shrink_photo.safetensors");
    let got = pre
        .run(&[data["image"].shallow_clone()], Kind::Half)
        .unwrap();
    assert_eq!(got.kind(), Kind::Half);
    let error = max_abs_diff(&got, &data["pixel_values"]);
    // f16 keeps 11 significant bits: values up to ~2.6 round by at most 2^-10.
    assert!(error <= bound(processor) + 2e-3, "{error}");
}

#[test]
fn model_fixture_configs_load() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for (dir, arch, expected) in [
        ("dpt-vit", "DPTForDepthEstimation", (64, 64)),
        ("dpt-hybrid", "DPTForDepthEstimation", (64, 64)),
        ("dpt-ade", "DPTForSemanticSegmentation", (64, 64)),
        ("dpt-dinov2", "DPTForDepthEstimation", (1092, 1932)),
        (
            "depth-anything",
            "DepthAnythingForDepthEstimation",
            (56, 98),
        ),
        ("dit", "BeitForImageClassification", (64, 64)),
        ("dinov2-cls", "Dinov2ForImageClassification", (42, 42)),
    ] {
        let pre = Preprocessor::from_model_dir(&models.join(dir), arch, None).unwrap();
        assert_eq!(pre.output_size(1080, 1920), expected, "{dir}");
    }
    // A size override on a processor that never resizes (DPT on DINOv2): resize, then pad.
    let pre = Preprocessor::from_model_dir(
        &models.join("dpt-dinov2"),
        "DPTForDepthEstimation",
        Some([100, 130]),
    )
    .unwrap();
    assert_eq!(pre.output_size(1080, 1920), (112, 140));
}

#[test]
fn missing_processor_file_uses_architecture_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, expected) in [
        ("DPTForDepthEstimation", (384, 384)),
        ("DPTForSemanticSegmentation", (480, 480)),
        ("DepthAnythingForDepthEstimation", (518, 924)),
        ("BeitForImageClassification", (224, 224)),
        ("Dinov2ForImageClassification", (224, 224)),
    ] {
        let pre = Preprocessor::from_model_dir(dir.path(), arch, None).unwrap();
        assert_eq!(pre.output_size(1080, 1920), expected, "{arch}");
    }
    let pre = Preprocessor::from_model_dir(dir.path(), "DPTForDepthEstimation", Some([512, 512]))
        .unwrap();
    assert_eq!(pre.output_size(1080, 1920), (512, 512));

    // DPT on a DINOv2 backbone, told apart by config.json.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["DPTForDepthEstimation"], "backbone_config": {"model_type": "dinov2"}}"#,
    )
    .unwrap();
    let pre = Preprocessor::from_model_dir(dir.path(), "DPTForDepthEstimation", None).unwrap();
    assert_eq!(pre.output_size(100, 101), (112, 112));

    let e = Preprocessor::from_model_dir(dir.path(), "SwinForImageClassification", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no preprocessor_config.json") && e.contains("'SwinForImageClassification'"),
        "{e}"
    );
}

#[test]
fn config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(
        &path,
        r#"{"image_processor_type": "DPTImageProcessor", "image_std": "wide"}"#,
    )
    .unwrap();
    let e = Preprocessor::from_model_dir(dir.path(), "DPTForDepthEstimation", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}: image_std:", path.display())),
        "{e}"
    );
    std::fs::write(&path, "{not json").unwrap();
    let e = Preprocessor::from_model_dir(dir.path(), "DPTForDepthEstimation", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = Preprocessor::from_model_dir(dir.path(), "DPTForDepthEstimation", Some([0, 10]));
    assert!(e.is_err());
}
