//! Finding and loading checkpoints: folders, shards, the hub cache, TorchScript, and the
//! errors a person sees when something is off (asserted word for word).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use visiond::config::{DType, DeviceSpec, ModelSource, Task};
use visiond::models::checkpoint::hub::{self, Fetch, HubSettings};
use visiond::models::checkpoint::{
    self, CheckpointFormat, LoadOptions, LoadedModel, WeightFiles, source_from_spec,
};
use visiond::models::{ModelError, arch};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// `pixel_values` and the expected output of one reference case.
fn reference(model: &str, case: &str, output: &str) -> (Tensor, Tensor) {
    let file = fixtures()
        .join("reference")
        .join(model)
        .join(format!("{case}.safetensors"));
    let tensors = Tensor::read_safetensors(&file).expect("reference file");
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .unwrap_or_else(|| panic!("{} has no {name}", file.display()))
    };
    (get("pixel_values"), get(output))
}

fn cpu() -> LoadOptions {
    LoadOptions {
        device: DeviceSpec::Cpu,
        dtype: DType::F32,
        ..LoadOptions::default()
    }
}

fn load_path(path: &Path, options: &LoadOptions) -> Result<LoadedModel, ModelError> {
    let source = ModelSource::Path(path.to_path_buf());
    let files = checkpoint::inspect(path)?;
    checkpoint::load(&source, &files, options)
}

fn forward(loaded: &LoadedModel, pixel_values: &Tensor) -> Tensor {
    tch::no_grad(|| loaded.model.forward(pixel_values)).expect("forward")
}

/// max |a - b| <= 1e-4 · max |b|: relative to the output's scale, since ReLU'd depth maps
/// hold exact zeros where a per-element relative test means nothing.
fn assert_close(actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.size(), expected.size());
    let scale = expected.abs().max().double_value(&[]).max(1e-6);
    let diff = (actual - expected).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4 * scale,
        "max abs difference {diff} exceeds 1e-4 relative to {scale}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A copy of `name` whose model.safetensors went through `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let temp = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir(name), temp.path());
    let file = temp.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).expect("read");
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &file).expect("write");
    temp
}

fn error_text(result: Result<LoadedModel, ModelError>) -> String {
    match result {
        Ok(_) => panic!("loading succeeded"),
        Err(error) => error.to_string(),
    }
}

const QUERY: &str = "dpt.encoder.layer.1.attention.attention.query.weight";

#[test]
fn missing_parameter_is_named() {
    let temp = edited_copy("dpt-vit", |tensors| {
        tensors.retain(|(name, _)| name != QUERY)
    });
    let error = error_text(load_path(temp.path(), &cpu()));
    assert_eq!(
        error,
        format!(
            "{}: checkpoint does not match its config.json:\n  missing parameters (1): {QUERY}",
            temp.path().display()
        )
    );
}

#[test]
fn wrong_shape_is_named() {
    let temp = edited_copy("dpt-vit", |tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == QUERY {
                *tensor = Tensor::zeros([32, 31], (Kind::Float, Device::Cpu));
            }
        }
    });
    let error = error_text(load_path(temp.path(), &cpu()));
    assert_eq!(
        error,
        format!(
            "{}: checkpoint does not match its config.json:\n  wrong shapes (1): {QUERY}: checkpoint has [32, 31], config implies [32, 32]",
            temp.path().display()
        )
    );
}

#[test]
fn bin_only_checkpoint_says_how_to_get_safetensors() {
    let dir = model_dir("dpt-vit-bin-only");
    let error = checkpoint::inspect(&dir).expect_err("bin only").to_string();
    let abs = dir.canonicalize().expect("fixture");
    assert_eq!(
        error,
        format!(
            "{bin}: only PyTorch pickle weights (pytorch_model.bin) found, and visiond loads safetensors only\n  \
             - if it came from the Hugging Face hub, many checkpoints carry safetensors on a pull-request revision: download that one instead (revision refs/pr/N)\n  \
             - or convert it once, in python3 with torch and safetensors installed:\n      \
             import torch; from safetensors.torch import save_file\n      \
             save_file({{k: v.clone().contiguous() for k, v in torch.load(\"{abs}/pytorch_model.bin\", map_location=\"cpu\").items()}}, \"{abs}/model.safetensors\", metadata={{\"format\": \"pt\"}})",
            bin = dir.join("pytorch_model.bin").display(),
            abs = abs.display(),
        )
    );
}

#[test]
fn no_weights_lists_what_was_looked_for() {
    let temp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        model_dir("dpt-vit").join("config.json"),
        temp.path().join("config.json"),
    )
    .expect("copy");
    let error = checkpoint::inspect(temp.path())
        .expect_err("no weights")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: no model weights: looked for model.safetensors, model.safetensors.index.json (sharded), model.pt (TorchScript) and pytorch_model.bin",
            temp.path().display()
        )
    );
}

#[test]
fn missing_folder_is_named() {
    let error = checkpoint::inspect(Path::new("/nonexistent/dpt"))
        .expect_err("missing")
        .to_string();
    assert_eq!(error, "/nonexistent/dpt: no such file or folder");
}

#[test]
fn invalid_config_names_file_line_and_column() {
    let temp = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir("dpt-vit"), temp.path());
    let config = temp.path().join("config.json");
    std::fs::write(&config, "{\n  \"model_type\": \"dpt\",\n  oops\n}\n").expect("write");
    let error = checkpoint::inspect(temp.path())
        .expect_err("bad json")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: invalid JSON: key must be a string at line 3 column 3",
            config.display()
        )
    );
}

#[test]
fn unknown_architecture_is_rejected_by_inspect() {
    let temp = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir("dpt-vit"), temp.path());
    let config = temp.path().join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    value["architectures"] = serde_json::json!(["SwinForImageClassification"]);
    std::fs::write(&config, value.to_string()).expect("write");
    let error = checkpoint::inspect(temp.path())
        .expect_err("unknown")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: architecture SwinForImageClassification is not supported (supported: {})",
            config.display(),
            arch::SUPPORTED.join(", ")
        )
    );
}

#[test]
fn architecture_falls_back_to_model_type() {
    for (name, expected) in [
        ("dpt-vit", "DPTForDepthEstimation"),
        ("dpt-ade", "DPTForSemanticSegmentation"),
        ("dpt-dinov2", "DPTForDepthEstimation"),
        ("depth-anything", "DepthAnythingForDepthEstimation"),
    ] {
        let temp = tempfile::tempdir().expect("tempdir");
        copy_dir(&model_dir(name), temp.path());
        let config = temp.path().join("config.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
        value
            .as_object_mut()
            .expect("object")
            .remove("architectures");
        std::fs::write(&config, value.to_string()).expect("write");
        let files = checkpoint::inspect(temp.path()).expect("inspect");
        assert_eq!(files.architecture(), expected, "{name}");
    }
}

#[test]
fn missing_shard_is_named() {
    let temp = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir("dpt-vit-sharded"), temp.path());
    std::fs::remove_file(temp.path().join("model-00002-of-00003.safetensors")).expect("rm");
    let error = checkpoint::inspect(temp.path())
        .expect_err("missing shard")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: weight_map names shard(s) missing from {}: model-00002-of-00003.safetensors",
            temp.path().join("model.safetensors.index.json").display(),
            temp.path().display()
        )
    );
}

#[test]
fn sharded_checkpoint_equals_unsharded() {
    let sharded_dir = model_dir("dpt-vit-sharded");
    let files = checkpoint::inspect(&sharded_dir).expect("inspect");
    let CheckpointFormat::Safetensors { weights, .. } = &files.format else {
        panic!("not safetensors");
    };
    let WeightFiles::Sharded { shards, .. } = weights else {
        panic!("not sharded: {weights:?}");
    };
    assert_eq!(shards.len(), 3);

    let sharded = load_path(&sharded_dir, &cpu()).expect("sharded");
    let single = load_path(&model_dir("dpt-vit"), &cpu()).expect("single");
    for case in ["native", "batch2"] {
        let (pixel_values, expected) = reference("dpt-vit", case, "predicted_depth");
        let a = forward(&sharded, &pixel_values);
        let b = forward(&single, &pixel_values);
        assert!(a.equal(&b), "{case}: sharded and unsharded outputs differ");
        assert_close(&a, &expected);
    }
}

#[test]
fn model_info_comes_from_config() {
    let loaded = load_path(&model_dir("dpt-ade"), &cpu()).expect("load");
    let info = &loaded.info;
    assert_eq!(info.name, "dpt-ade");
    assert_eq!(info.architecture, "DPTForSemanticSegmentation");
    assert_eq!(info.task, Task::Segmentation);
    assert_eq!(info.id2label, ["wall", "building", "sky", "floor", "tree"]);
    assert_eq!(info.patch_size, Some(16));
    assert_eq!(info.device, Device::Cpu);
    assert_eq!(info.output_name(), "logits");

    let loaded = load_path(&model_dir("depth-anything"), &cpu()).expect("load");
    // Depth-Anything keeps patch and image size in its backbone_config.
    assert_eq!(loaded.info.patch_size, Some(14));
    assert_eq!(loaded.info.image_size, Some([56, 56]));
    assert_eq!(loaded.info.task, Task::Depth);
}

#[test]
fn declared_task_must_match_checkpoint() {
    let options = LoadOptions {
        task: Some(Task::Classification),
        ..cpu()
    };
    let error = error_text(load_path(&model_dir("dpt-vit"), &options));
    assert_eq!(
        error,
        format!(
            "{}: DPTForDepthEstimation computes depth, not the declared task classification",
            model_dir("dpt-vit").join("config.json").display()
        )
    );
}

#[test]
fn source_parsing() {
    let dir = model_dir("dpt-vit");
    let spec = dir.to_str().expect("utf-8");
    assert_eq!(
        source_from_spec(spec, None).expect("path"),
        ModelSource::Path(dir.clone())
    );
    assert_eq!(
        source_from_spec("Intel/dpt-large", None).expect("hub"),
        ModelSource::Hub {
            repo: "Intel/dpt-large".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        source_from_spec("Intel/dpt-large-ade", Some("refs/pr/4")).expect("hub"),
        ModelSource::Hub {
            repo: "Intel/dpt-large-ade".into(),
            revision: "refs/pr/4".into()
        }
    );
    assert_eq!(
        source_from_spec("./no/such/model", None)
            .expect_err("neither")
            .to_string(),
        "./no/such/model: no such file or folder, and not a Hugging Face hub id (org/name)"
    );
    assert_eq!(
        source_from_spec("Intel/dpt-large", Some("../../etc"))
            .expect_err("bad revision")
            .to_string(),
        "Intel/dpt-large: revision '../../etc' is not a branch, tag, refs/pr/N or commit hash"
    );
    assert_eq!(
        source_from_spec(spec, Some("main"))
            .expect_err("revision on a path")
            .to_string(),
        format!(
            "{spec}: is a local path, so revision main does not apply (revisions are for hub ids such as Intel/dpt-large)"
        )
    );
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A Hugging Face cache holding `visiond/dpt-vit` at `main` (= COMMIT), built as
/// `hf download` leaves it (minus the blob links: plain files resolve the same way).
fn hub_cache() -> tempfile::TempDir {
    let cache = tempfile::tempdir().expect("tempdir");
    let repo = cache.path().join("models--visiond--dpt-vit");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs/main"), COMMIT).expect("ref");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir("dpt-vit").join(file), snapshot.join(file)).expect("copy");
    }
    cache
}

fn offline(cache: &Path) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_path_buf(),
        offline: true,
        endpoint: None,
        token: None,
    }
}

#[test]
fn hub_cache_hit_loads_the_snapshot() {
    let cache = hub_cache();
    let snapshot = cache
        .path()
        .join("models--visiond--dpt-vit/snapshots")
        .join(COMMIT);
    let settings = offline(cache.path());
    let found = hub::resolve(&settings, "visiond/dpt-vit", "main", Fetch::Download).expect("hit");
    assert_eq!(found, snapshot);
    // A commit hash goes straight to its snapshot, no ref needed.
    let found = hub::resolve(&settings, "visiond/dpt-vit", COMMIT, Fetch::CacheOnly).expect("hit");
    assert_eq!(found, snapshot);

    let loaded = load_path(&found, &cpu()).expect("load");
    let (pixel_values, expected) = reference("dpt-vit", "native", "predicted_depth");
    assert_close(&forward(&loaded, &pixel_values), &expected);
}

#[test]
fn hub_miss_offline_names_cache_and_command() {
    let cache = hub_cache();
    let settings = offline(cache.path());
    let error = hub::resolve(&settings, "Intel/dpt-large", "main", Fetch::Download)
        .expect_err("miss")
        .to_string();
    assert_eq!(
        error,
        format!(
            "Intel/dpt-large (revision main) is not available: not in the cache ({repo} does not exist), and HF_HUB_OFFLINE is set, so it was not downloaded\n  \
             looked in the Hugging Face cache at {cache}\n  \
             fetch it with: hf download Intel/dpt-large --revision main --include '*.json' '*.safetensors'",
            repo = cache.path().join("models--Intel--dpt-large").display(),
            cache = cache.path().display(),
        )
    );

    let error = hub::resolve(&settings, "visiond/dpt-vit", "v2", Fetch::CacheOnly)
        .expect_err("unknown revision")
        .to_string();
    assert_eq!(
        error,
        format!(
            "visiond/dpt-vit (revision v2) is not available: revision v2 is not in the cache ({ref_file} does not exist), and HF_HUB_OFFLINE is set, so it was not downloaded\n  \
             looked in the Hugging Face cache at {cache}\n  \
             fetch it with: hf download visiond/dpt-vit --revision v2 --include '*.json' '*.safetensors'",
            ref_file = cache
                .path()
                .join("models--visiond--dpt-vit/refs/v2")
                .display(),
            cache = cache.path().display(),
        )
    );
}

#[test]
fn hub_cache_only_check_does_not_download() {
    let cache = tempfile::tempdir().expect("tempdir");
    let settings = HubSettings {
        offline: false,
        ..offline(cache.path())
    };
    let error = hub::resolve(&settings, "Intel/dpt-large", "main", Fetch::CacheOnly)
        .expect_err("miss")
        .to_string();
    assert!(
        error.starts_with(&format!(
            "Intel/dpt-large (revision main) is not available: not in the cache ({} does not exist)\n",
            cache.path().join("models--Intel--dpt-large").display()
        )),
        "{error}"
    );
}

#[test]
fn torchscript_matches_its_reference() {
    let path = model_dir("torchscript-depth");
    let options = LoadOptions {
        task: Some(Task::Depth),
        ..cpu()
    };
    let loaded = load_path(&path, &options).expect("load");
    assert_eq!(loaded.info.architecture, "TorchScript");
    assert_eq!(loaded.info.task, Task::Depth);
    for case in ["native", "non_square", "batch2"] {
        let (pixel_values, expected) = reference("torchscript-depth", case, "predicted_depth");
        assert_close(&forward(&loaded, &pixel_values), &expected);
    }
    // The file itself works as well as its folder.
    let loaded = load_path(&path.join("model.pt"), &options).expect("load file");
    let (pixel_values, expected) = reference("torchscript-depth", "native", "predicted_depth");
    assert_close(&forward(&loaded, &pixel_values), &expected);
}

#[test]
fn torchscript_needs_a_task_that_fits_its_output() {
    let path = model_dir("torchscript-depth");
    let module = path.join("model.pt");
    let error = error_text(load_path(&path, &cpu()));
    assert_eq!(
        error,
        format!(
            "{}: a TorchScript model needs its task declared: depth, segmentation or classification (--task, or `task:` in the config)",
            module.display()
        )
    );

    let options = LoadOptions {
        task: Some(Task::Segmentation),
        ..cpu()
    };
    let loaded = load_path(&path, &options).expect("load");
    let (pixel_values, _) = reference("torchscript-depth", "native", "predicted_depth");
    let error = tch::no_grad(|| loaded.model.forward(&pixel_values))
        .expect_err("rank")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: declared task segmentation expects output [B, C, H, W], but the module returned [1, 32, 32]",
            module.display()
        )
    );
}

#[test]
fn torchscript_labels_files() {
    let temp = tempfile::tempdir().expect("tempdir");
    let text = temp.path().join("labels.txt");
    std::fs::write(&text, "cat\ndog\n\n").expect("write");
    let json = temp.path().join("labels.json");
    std::fs::write(&json, r#"{"1": "dog", "0": "cat"}"#).expect("write");
    let gap = temp.path().join("gap.json");
    std::fs::write(&gap, r#"{"0": "cat", "2": "dog"}"#).expect("write");
    let options = |labels: &Path| LoadOptions {
        task: Some(Task::Classification),
        labels: Some(labels.to_path_buf()),
        ..cpu()
    };
    let path = model_dir("torchscript-depth");
    for labels in [&text, &json] {
        let loaded = load_path(&path, &options(labels)).expect("load");
        assert_eq!(loaded.info.id2label, ["cat", "dog"]);
        assert_eq!(loaded.info.label(5), "class 5");
    }
    let error = error_text(load_path(&path, &options(&gap)));
    assert_eq!(
        error,
        format!(
            "{}: id2label ids must be 0..1 but it has id 2",
            gap.display()
        )
    );
}
