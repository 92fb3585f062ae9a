//! Parity of the native ports with transformers 5.17 on tiny random checkpoints
//! (`tests/fixtures/models/<name>`, references in `tests/fixtures/reference/<name>`, both
//! written by `tools/make_fixtures.py`), plus the loading and input errors users see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use visiond::models::arch;
use visiond::models::nn::weights::Weights;
use visiond::models::{ModelError, VisionModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds a fixture model from `tensors` (or its own `model.safetensors` when `None`).
fn build_from(name: &str, tensors: Option<&Path>) -> Result<Box<dyn VisionModel>, ModelError> {
    let dir = fixtures().join("models").join(name);
    let config = read_json(&dir.join("config.json"));
    let file = tensors.map_or_else(|| dir.join("model.safetensors"), Path::to_path_buf);
    let weights = Weights::read_safetensors(&[file], Device::Cpu, Kind::Float, &dir)?;
    let architecture = arch::architecture_of(&config, &dir.join("config.json"))?;
    arch::build(&architecture, &config, weights)
}

fn build(name: &str) -> Box<dyn VisionModel> {
    build_from(name, None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn check_parity(name: &str) {
    // Shows the loader's warning for checkpoint entries no architecture uses.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let reference = fixtures().join("reference").join(name);
    let cases = read_json(&reference.join("cases.json"));
    let model = build(name);
    let cases = cases["cases"].as_array().expect("cases.json has cases");
    assert!(!cases.is_empty(), "{name}: no cases");
    let mut failures = Vec::new();
    for case in cases {
        let case_name = case["name"].as_str().unwrap_or("?");
        let output_key = case["output"].as_str().expect("case names its output");
        let file = reference.join(case["file"].as_str().expect("case names its file"));
        let tensors = read_tensors(&file);
        let pixel_values = &tensors["pixel_values"];
        let expected = &tensors[output_key];
        let got = tch::no_grad(|| model.forward(pixel_values))
            .unwrap_or_else(|e| panic!("{name}/{case_name}: {e}"));
        if got.size() != expected.size() {
            failures.push(format!(
                "{case_name}: shape {:?}, expected {:?}",
                got.size(),
                expected.size()
            ));
            continue;
        }
        let error = (&got - expected).abs().max().double_value(&[]);
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let tolerance = 1e-4 * scale;
        println!(
            "{name}/{case_name}: {output_key} {:?} max abs error {error:.3e} (tolerance {tolerance:.1e})",
            got.size()
        );
        if error.is_nan() || error > tolerance {
            failures.push(format!(
                "{case_name}: max abs error {error:.3e} > {tolerance:.1e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{name}: {}", failures.join("; "));
}

macro_rules! parity {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check_parity($name);
            }
        )*
    };
}

parity! {
    parity_dpt_vit => "dpt-vit",
    parity_dpt_vit_add => "dpt-vit-add",
    parity_dpt_vit_ignore => "dpt-vit-ignore",
    parity_dpt_hybrid => "dpt-hybrid",
    parity_dpt_dinov2 => "dpt-dinov2",
    parity_dpt_ade => "dpt-ade",
    parity_dit => "dit",
    parity_beit_relpos => "beit-relpos",
    parity_dinov2_cls => "dinov2-cls",
    parity_depth_anything => "depth-anything",
}

fn forward_error(name: &str, shape: &[i64]) -> String {
    let model = build(name);
    let input = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    match tch::no_grad(|| model.forward(&input)) {
        Ok(out) => panic!("{name}: {shape:?} was accepted, output {:?}", out.size()),
        Err(e) => {
            assert!(
                matches!(e, ModelError::InputSize { .. }),
                "{name}: not an InputSize error: {e}"
            );
            e.to_string()
        }
    }
}

#[test]
fn input_sizes_that_are_not_whole_patches_are_refused() {
    assert_eq!(
        forward_error("dpt-vit", &[1, 3, 65, 64]),
        "DPTForDepthEstimation: input 65x64 not accepted: height and width must be positive multiples of the patch size 16"
    );
    assert_eq!(
        forward_error("dpt-ade", &[1, 3, 64, 8]),
        "DPTForSemanticSegmentation: input 64x8 not accepted: height and width must be positive multiples of the patch size 16"
    );
    assert_eq!(
        forward_error("dpt-dinov2", &[1, 3, 56, 50]),
        "DPTForDepthEstimation: input 56x50 not accepted: height and width must be positive multiples of the patch size 14"
    );
    assert_eq!(
        forward_error("depth-anything", &[2, 3, 57, 56]),
        "DepthAnythingForDepthEstimation: input 57x56 not accepted: height and width must be positive multiples of the patch size 14"
    );
    assert_eq!(
        forward_error("dit", &[1, 3, 64, 72]),
        "BeitForImageClassification: input 64x72 not accepted: height and width must be positive multiples of the patch size 16"
    );
    assert_eq!(
        forward_error("dinov2-cls", &[1, 3, 0, 0]),
        "Dinov2ForImageClassification: input 0x0 not accepted: height and width must be positive multiples of the patch size 14"
    );
}

#[test]
fn hybrid_takes_only_its_image_size() {
    assert_eq!(
        forward_error("dpt-hybrid", &[1, 3, 96, 96]),
        "DPTForDepthEstimation: input 96x96 not accepted: DPT-hybrid takes exactly its image_size 64x64 (fixed BiT feature map and position embeddings)"
    );
}

#[test]
fn inputs_that_are_not_rgb_batches_are_refused() {
    assert_eq!(
        forward_error("dpt-vit", &[1, 1, 64, 64]),
        "DPTForDepthEstimation: input 64x64 not accepted: expected pixel_values [B, 3, H, W], got [1, 1, 64, 64]"
    );
    assert_eq!(
        forward_error("dit", &[3, 64, 64]),
        "BeitForImageClassification: input 64x64 not accepted: expected pixel_values [B, 3, H, W], got [3, 64, 64]"
    );
}

/// Writes the fixture's tensors, changed by `edit`, to a temporary safetensors file.
fn edited_checkpoint(
    name: &str,
    dir: &tempfile::TempDir,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let source = fixtures()
        .join("models")
        .join(name)
        .join("model.safetensors");
    let mut tensors = read_tensors(&source);
    edit(&mut tensors);
    let path = dir.path().join("model.safetensors");
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&list, &path).expect("write the edited checkpoint");
    path
}

fn load_error(name: &str, tensors: &Path) -> ModelError {
    match build_from(name, Some(tensors)) {
        Ok(_) => panic!("{name}: the edited checkpoint loaded"),
        Err(e) => e,
    }
}

#[test]
fn missing_parameters_are_all_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let removed = [
        "dpt.encoder.layer.2.attention.attention.key.weight",
        "neck.fusion_stage.layers.1.residual_layer1.convolution2.bias",
    ];
    let path = edited_checkpoint("dpt-vit", &tmp, |t| {
        for name in removed {
            assert!(t.remove(name).is_some(), "fixture has {name}");
        }
    });
    let error = load_error("dpt-vit", &path);
    let ModelError::Parameters {
        missing,
        wrong_shape,
        ..
    } = &error
    else {
        panic!("not a Parameters error: {error}");
    };
    assert_eq!(missing, &removed.map(String::from));
    assert!(wrong_shape.is_empty());
    let message = error.to_string();
    assert!(
        message.contains("missing parameters (2): dpt.encoder.layer.2.attention.attention.key.weight, neck.fusion_stage.layers.1.residual_layer1.convolution2.bias"),
        "{message}"
    );
}

#[test]
fn a_known_unused_parameter_may_be_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = edited_checkpoint("dpt-ade", &tmp, |t| {
        t.retain(|name, _| {
            !name.starts_with("auxiliary_head.") && !name.starts_with("dpt.layernorm.")
        });
    });
    build_from("dpt-ade", Some(&path)).expect("auxiliary head and final layernorm are optional");
}

#[test]
fn wrong_shapes_are_named_with_both_shapes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = edited_checkpoint("dit", &tmp, |t| {
        t.insert(
            "beit.encoder.layer.1.lambda_1".into(),
            Tensor::ones([16], (Kind::Float, Device::Cpu)),
        );
    });
    let error = load_error("dit", &path);
    let message = error.to_string();
    assert!(
        matches!(&error, ModelError::Parameters { missing, .. } if missing.is_empty()),
        "{message}"
    );
    assert!(
        message.contains(
            "wrong shapes (1): beit.encoder.layer.1.lambda_1: checkpoint has [16], config implies [32]"
        ),
        "{message}"
    );
}

#[test]
fn unknown_architectures_list_the_supported_ones() {
    let dir = fixtures().join("models").join("dit");
    let config = read_json(&dir.join("config.json"));
    let weights = Weights::read_safetensors(
        &[dir.join("model.safetensors")],
        Device::Cpu,
        Kind::Float,
        &dir,
    )
    .expect("read fixture");
    let error = match arch::build("SwinForImageClassification", &config, weights) {
        Ok(_) => panic!("an unknown architecture was built"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(
        matches!(error, ModelError::UnsupportedArchitecture { .. }),
        "{message}"
    );
    assert!(
        message.ends_with(
            "architecture SwinForImageClassification is not supported (supported: DPTForDepthEstimation, DPTForSemanticSegmentation, BeitForImageClassification, Dinov2ForImageClassification, DepthAnythingForDepthEstimation)"
        ),
        "{message}"
    );
}

#[test]
fn half_precision_runs_and_stays_close() {
    // bf16/f16 inference must work end to end (position grids resized in f32); on the CPU the
    // comparison is loose since the whole network runs in half precision.
    let dir = fixtures().join("models").join("depth-anything");
    let config = read_json(&dir.join("config.json"));
    let weights = Weights::read_safetensors(
        &[dir.join("model.safetensors")],
        Device::Cpu,
        Kind::BFloat16,
        &dir,
    )
    .expect("read fixture");
    let model = arch::build("DepthAnythingForDepthEstimation", &config, weights).expect("build");
    let case = read_tensors(&fixtures().join("reference/depth-anything/non_square.safetensors"));
    let got = tch::no_grad(|| model.forward(&case["pixel_values"].to_kind(Kind::BFloat16)))
        .expect("bf16 forward");
    assert_eq!(got.kind(), Kind::BFloat16);
    let expected = &case["predicted_depth"];
    let error = (got.to_kind(Kind::Float) - expected)
        .abs()
        .max()
        .double_value(&[]);
    let scale = expected.abs().max().double_value(&[]).max(1.0);
    println!("depth-anything/non_square bf16: max abs error {error:.3e}");
    assert!(error < 0.1 * scale, "bf16 error {error}");
}
