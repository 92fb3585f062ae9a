//! `visiond check` and `Config::load`: every validation rule, with its exact message.

use std::path::{Path, PathBuf};
use std::process::Command;

use visiond::config::{Config, DepthRange, ModelSource, SinkConfig, WhenFull};

/// A daemon file plus pipeline files in a temporary directory.
struct Tree {
    dir: tempfile::TempDir,
}

const DAEMON: &str = "pipelines_dir: pipelines\nmodels:\n  depth: { path: model }\n";

impl Tree {
    fn new(daemon: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        // A real (tiny) checkpoint: `check` inspects config.json and the weight files.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/dpt-vit");
        std::fs::create_dir(dir.path().join("model")).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(file), dir.path().join("model").join(file)).unwrap();
        }
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("visiond.yaml"), daemon).unwrap();
        Tree { dir }
    }

    fn pipeline(&self, name: &str, text: &str) -> &Self {
        std::fs::write(self.dir.path().join("pipelines").join(name), text).unwrap();
        self
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn file(&self, relative: &str) -> String {
        self.path(relative).display().to_string()
    }

    fn load(&self) -> Result<Config, Vec<String>> {
        visiond::preflight::load(&self.path("visiond.yaml"))
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
    }

    fn errors(&self) -> Vec<String> {
        match self.load() {
            Ok(_) => panic!("configuration unexpectedly valid"),
            Err(errors) => errors,
        }
    }
}

const GOOD_PIPELINE: &str = "\
name: door
source: { test: { width: 64, height: 48, frames: 5 } }
model: depth
sinks:
  - file: { path: ../out/door.mp4 }
";

#[test]
fn a_valid_tree_loads_with_defaults_and_resolved_paths() {
    let tree = Tree::new(DAEMON);
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let config = tree.load().expect("valid");
    assert_eq!(config.pipelines.len(), 1);
    let pipeline = &config.pipelines[0].config;
    assert_eq!(pipeline.name, "door");
    assert_eq!(pipeline.queue.capacity, 4);
    assert_eq!(pipeline.queue.when_full, None);
    assert!(
        !pipeline.source.is_live(),
        "a counted test source is finite"
    );
    assert_eq!(pipeline.overlay.range, DepthRange::Ema);
    match &pipeline.sinks[0] {
        SinkConfig::File(file) => assert_eq!(file.path, tree.path("out/door.mp4")),
        other => panic!("unexpected sink {other:?}"),
    }
    assert_eq!(
        config.daemon.models["depth"].source,
        ModelSource::Path(tree.path("model"))
    );
    assert_eq!(config.daemon.rtsp.port, 8554);
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nlogg: {}\nmodels:\n  depth: { path: model, batch: { max_sise: 2 } }\n",
    );
    tree.pipeline(
        "door.yaml",
        "name: door\nsource: { test: { frames: 5, colour: red } }\nmodel: depth\nsinks:\n  - file: { pth: a.mp4 }\nextra: 1\n",
    );
    let d = tree.file("visiond.yaml");
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![
            format!(
                "{d}: models.depth.batch.max_sise: unknown field `max_sise`, expected `max_size` or `max_wait_ms`"
            ),
            format!(
                "{d}: logg: unknown key; expected one of: name, http, log, rtsp, shutdown, outputs, pipelines_dir, models, brokers"
            ),
            format!(
                "{p}: source.test.colour: unknown field `colour`, expected one of `pattern`, `width`, `height`, `fps`, `frames`"
            ),
            format!(
                "{p}: sinks[0].file.pth: unknown field `pth`, expected one of `path`, `format`, `segment_s`, `max_age`, `max_bytes`"
            ),
            // Reading goes on past the misspelt key, and finds what is then missing.
            format!("{p}: sinks[0].file: missing field `path`"),
            format!(
                "{p}: extra: unknown key; expected one of: name, source, model, queue, overlay, encoder, sinks, metadata"
            ),
        ]
    );
}

#[test]
fn wrong_types_and_missing_fields_are_reported_together() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nhttp: { listen: 9090 }\nmodels:\n  depth: { path: model, batch: { max_size: four } }\n",
    );
    tree.pipeline(
        "door.yaml",
        "source: { test: { width: wide } }\nmodel: depth\nqueue: { capacity: -1 }\nsinks:\n  - rtsp: {}\n  - udp: { host: h, port: 70000 }\n",
    );
    let d = tree.file("visiond.yaml");
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![
            format!(
                "{d}: http.listen: '9090' is not an address:port such as 127.0.0.1:9090 or [::1]:9090"
            ),
            format!(
                "{d}: models.depth.batch.max_size: invalid type: string \"four\", expected usize"
            ),
            format!("{p}: name: required key is missing"),
            format!("{p}: source.test.width: invalid type: string \"wide\", expected u32"),
            format!("{p}: queue.capacity: invalid type: integer `-1`, expected usize"),
            format!("{p}: sinks[0].rtsp: missing field `mount`"),
            format!("{p}: sinks[1].udp.port: invalid value: integer `70000`, expected u16"),
        ]
    );
}

#[test]
fn duplicate_names_mounts_ports_and_outputs_across_files() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nhttp: { listen: \"127.0.0.1:8554\" }\nmodels:\n  depth: { path: model }\n",
    );
    tree.pipeline(
        "a.yaml",
        "name: door\nsource: { test: {} }\nmodel: depth\nsinks:\n  - rtsp: { mount: /door }\n  - udp: { host: 10.0.0.5, port: 5004 }\n  - file: { path: ../out/x.mp4 }\n",
    );
    tree.pipeline(
        "b.yaml",
        "name: door\nsource: { test: {} }\nmodel: none\nsinks:\n  - rtsp: { mount: /door }\n  - udp: { host: 10.0.0.5, port: 5004 }\n  - file: { path: ../out/x.mp4 }\n  - udp: { host: localhost, port: 8554 }\n",
    );
    let d = tree.file("visiond.yaml");
    let a = tree.file("pipelines/a.yaml");
    let b = tree.file("pipelines/b.yaml");
    let out = tree.file("out/x.mp4");
    assert_eq!(
        tree.errors(),
        vec![
            format!("{d}: rtsp.port: port 8554 is also used by http.listen"),
            format!("{b}: name: pipeline name 'door' is already used by {a}"),
            format!(
                "{b}: sinks[0].rtsp.mount: mount /door is already served by {a} sinks[0].rtsp.mount"
            ),
            format!(
                "{b}: sinks[1].udp.port: 10.0.0.5:5004 is already a target of {a} sinks[1].udp.port"
            ),
            format!("{b}: sinks[2].file.path: {out} is already written by {a} sinks[2].file.path"),
            format!(
                "{b}: sinks[3].udp.port: port 8554 is used by the daemon's own RTSP or HTTP server"
            ),
        ]
    );
}

#[test]
fn models_undefined_unparsable_device_and_bad_paths() {
    let tree = Tree::new(
        "pipelines_dir: pipelines
models:
  gpu: { path: model, device: \"cuda:x\" }
  gone: { path: /nonexistent/visiond-model }
  empty: { path: empty }
  noweights: { path: noweights }
  binonly: { path: binonly }
  noarch: { path: noarch }
  script: { path: script }
  both: { path: model, hub: Intel/dpt-large }
  badhub: { hub: dpt-large }
",
    );
    std::fs::create_dir(tree.path("empty")).unwrap();
    for dir in ["noweights", "binonly", "noarch"] {
        std::fs::create_dir(tree.path(dir)).unwrap();
        std::fs::write(
            tree.path(dir).join("config.json"),
            r#"{"architectures": ["DPTForDepthEstimation"]}"#,
        )
        .unwrap();
    }
    std::fs::write(tree.path("noarch/config.json"), "{}").unwrap();
    std::fs::write(tree.path("noarch/model.safetensors"), "").unwrap();
    std::fs::write(tree.path("binonly/pytorch_model.bin"), "").unwrap();
    std::fs::create_dir(tree.path("script")).unwrap();
    std::fs::write(tree.path("script/model.pt"), "").unwrap();
    tree.pipeline(
        "door.yaml",
        &GOOD_PIPELINE.replace("model: depth", "model: dept"),
    );
    let d = tree.file("visiond.yaml");
    let p = tree.file("pipelines/door.yaml");
    let t = |rel: &str| tree.file(rel);
    let mut errors = tree.errors();
    // Models are reported by name. The .bin-only message goes on to show how to get
    // safetensors; its first line and its two remedies are what matter here.
    let bin_only = errors.remove(1);
    let b = t("binonly");
    assert!(
        bin_only.starts_with(&format!(
            "{d}: models.binonly.path: {b}/pytorch_model.bin: only PyTorch pickle weights (pytorch_model.bin) found, and visiond loads safetensors only\n"
        )),
        "{bin_only}"
    );
    assert!(bin_only.contains("revision refs/pr/N"), "{bin_only}");
    assert!(
        bin_only.contains(&format!("\"{b}/model.safetensors\"")),
        "{bin_only}"
    );
    let no_weights = |dir: &str| {
        format!(
            "{d}: models.{dir}.path: {}: no model weights: looked for model.safetensors, model.safetensors.index.json (sharded), model.pt (TorchScript) and pytorch_model.bin",
            t(dir)
        )
    };
    assert_eq!(
        errors,
        vec![
            format!(
                "{d}: models.badhub.hub: 'dpt-large' is not a hub id; expected org/name, e.g. Intel/dpt-large"
            ),
            format!("{d}: models.both: set either `path` or `hub`, not both"),
            no_weights("empty"),
            format!("{d}: models.gone.path: /nonexistent/visiond-model: no such file or folder"),
            format!(
                "{d}: models.gpu.device: unparsable device 'cuda:x': expected cpu, cuda, cuda:N or auto"
            ),
            format!(
                "{d}: models.noarch.path: {}/config.json: names no architecture: neither `architectures` nor `model_type` is set",
                t("noarch")
            ),
            no_weights("noweights"),
            format!(
                "{d}: models.script.path: {} is a TorchScript model: set `task` (depth, segmentation or classification)",
                t("script/model.pt")
            ),
            format!(
                "{p}: model: model 'dept' is not defined in {d} (defined: badhub, binonly, both, empty, gone, gpu, noarch, noweights, script; or 'none' for no inference)"
            ),
        ]
    );
}

#[test]
fn output_directories_must_exist_and_be_writable() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: door\nsource: { test: {} }\nmodel: depth\nsinks:\n  - file: { path: /nope/door.mp4 }\n  - file: { path: /etc/hostname/door.mp4 }\n  - file: { path: /proc/door.mp4 }\n  - file: { path: ../out/door.avi }\nmetadata:\n  - jsonl: { path: /nope/door.jsonl }\n  - jsonl: { path: ../out/m.jsonl, stdout: true }\n",
    );
    let p = tree.file("pipelines/door.yaml");
    let errors = tree.errors();
    assert_eq!(
        errors[0],
        format!("{p}: sinks[0].file.path: parent directory /nope does not exist")
    );
    assert_eq!(
        errors[1],
        format!("{p}: sinks[1].file.path: parent /etc/hostname is not a directory")
    );
    assert!(
        errors[2].starts_with(&format!(
            "{p}: sinks[2].file.path: directory /proc is not writable: "
        )),
        "{}",
        errors[2]
    );
    assert_eq!(
        errors[3..],
        [
            format!(
                "{p}: sinks[3].file.path: cannot tell the container from the extension: use .mp4 or .mkv, or set `format`"
            ),
            format!("{p}: metadata[0].jsonl.path: parent directory /nope does not exist"),
            format!("{p}: metadata[1].jsonl: set exactly one of `path` and `stdout: true`"),
        ]
    );
    // The check leaves nothing behind in the directories it probed.
    assert_eq!(std::fs::read_dir(tree.path("out")).unwrap().count(), 0);
}

#[test]
fn yaml_syntax_errors_name_line_and_column() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: door\nsource: { test: {}\nmodel: depth\n",
    );
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![format!(
            "{p}: YAML syntax error at line 3 column 1: did not find expected ',' or '}}'"
        )]
    );
}

#[test]
fn source_sink_overlay_and_encoder_rules() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: front door
source: { uri: ftp://cam/stream, test: {}, fps: 0, reconnect: { initial_ms: 1000, max_ms: 10, jitter: 1.5 } }
model: depth
queue: { capacity: 0, when_full: block }
overlay: { alpha: 1.5, range: { fixed: [5, 1] }, top_k: 0 }
encoder: { element: nosuchenc264, keyframe_interval: 0 }
sinks:
  - rtsp: { mount: door }
  - launch: { pipeline: \"fakesink nosuchprop=1\" }
",
    );
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![
            format!(
                "{p}: name: 'front door' is not a valid pipeline name: use letters, digits, '-', '_' and '.'"
            ),
            format!(
                "{p}: source: set only one of `uri`, `v4l2`, `test` or `launch` (found uri, test)"
            ),
            format!(
                "{p}: source.uri: unsupported scheme 'ftp'; expected rtsp, rtsps, http, https or file"
            ),
            format!("{p}: source.fps: must be a positive number of frames per second"),
            format!("{p}: source.reconnect.max_ms: must not be below initial_ms (1000)"),
            format!("{p}: source.reconnect.jitter: must be a fraction in [0, 1)"),
            format!("{p}: queue.capacity: must be at least 1"),
            format!("{p}: overlay.alpha: must be between 0 and 1"),
            format!("{p}: overlay.range.fixed: lower bound 5 must be below upper bound 1"),
            format!("{p}: overlay.top_k: must be at least 1"),
            format!("{p}: encoder.keyframe_interval: must be at least 1 frame"),
            format!(
                "{p}: encoder.element: no GStreamer element 'nosuchenc264' on this machine (gst-inspect-1.0 nosuchenc264 tells which plugin provides it)"
            ),
            format!(
                "{p}: sinks[0].rtsp.mount: 'door' is not a mount path; expected e.g. /front-door"
            ),
            format!(
                "{p}: sinks[1].launch.pipeline: GStreamer cannot build 'fakesink nosuchprop=1': no property \"nosuchprop\" in element \"fakesink\""
            ),
        ]
    );
}

#[test]
fn recording_retention_keys_are_checked() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: door
source: { test: {} }
model: depth
sinks:
  - file: { path: ../out/a.mp4, segment_s: 60, max_age: 7x }
  - file: { path: ../out/b.mp4, segment_s: 60, max_bytes: -1 }
  - file: { path: ../out/c.mp4, max_age: 3600, max_bytes: 1000 }
  - file: { path: ../out/d.mp4, segment_s: 60, max_age: 0, max_bytes: 0 }
  - file: { path: ../out/e-%s.mkv, segment_s: 60 }
",
    );
    let p = tree.file("pipelines/door.yaml");
    let needs = "deletes old segments, so it needs `segment_s` (a recording without segments is one file, which is never deleted)";
    assert_eq!(
        tree.errors(),
        vec![
            format!(
                "{p}: sinks[0].file.max_age: '7x' is not an age: give seconds, or a number and a unit such as \"7d\", \"12h\" or \"30m\""
            ),
            format!("{p}: sinks[1].file.max_bytes: invalid type: integer `-1`, expected u64"),
            format!("{p}: sinks[2].file.max_age: {needs}"),
            format!("{p}: sinks[2].file.max_bytes: {needs}"),
            format!("{p}: sinks[3].file.max_age: must be more than 0"),
            format!("{p}: sinks[3].file.max_bytes: must be at least 1"),
            format!(
                "{p}: sinks[4].file.path: 'e-%s.mkv' may hold one segment counter, %d or %0Nd (e.g. %05d), and no other '%'"
            ),
        ]
    );
    // Nothing was written where the recordings would go.
    assert_eq!(std::fs::read_dir(tree.path("out")).unwrap().count(), 0);

    tree.pipeline(
        "door.yaml",
        "name: door
source: { test: {} }
model: depth
sinks:
  - file: { path: ../out/a.mp4, segment_s: 60, max_age: 1d 12h, max_bytes: 5000000000 }
  - file: { path: ../out/b-%03d.mkv, segment_s: 60, max_age: 600 }
",
    );
    let config = tree.load().expect("valid");
    let ages: Vec<_> = config.pipelines[0]
        .config
        .sinks
        .iter()
        .map(|sink| match sink {
            SinkConfig::File(file) => (file.max_age.map(|a| a.as_secs()), file.max_bytes),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ages,
        vec![(Some(36 * 3600), Some(5_000_000_000)), (Some(600), None)]
    );
}

#[test]
fn queue_policy_and_depth_range_enums_decode() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        &format!("{GOOD_PIPELINE}queue: {{ capacity: 2, when_full: drop_newest }}\noverlay: {{ mode: side_by_side, colormap: inferno, range: {{ fixed: [0.5, 10] }} }}\n"),
    );
    let config = tree.load().expect("valid");
    let pipeline = &config.pipelines[0].config;
    assert_eq!(pipeline.queue.when_full, Some(WhenFull::DropNewest));
    assert_eq!(pipeline.overlay.range, DepthRange::Fixed([0.5, 10.0]));
}

fn visiond() -> Command {
    Command::new(env!("CARGO_BIN_EXE_visiond"))
}

#[test]
fn check_exits_2_and_prints_every_error_on_stderr() {
    let tree =
        Tree::new("pipelines_dir: pipelines\nmodels:\n  depth: { path: model, device: gpu }\n");
    tree.pipeline("a.yaml", "name: a\nsource: { test: {} }\nmodel: depth\n");
    tree.pipeline("b.yaml", "name: b\nsource: [\n");
    let output = visiond()
        .arg("check")
        .arg("-c")
        .arg(tree.path("visiond.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].ends_with("visiond.yaml: models.depth.device: unparsable device 'gpu': expected cpu, cuda, cuda:N or auto"));
    assert!(lines[1].ends_with(
        "a.yaml: sinks: the pipeline has no sinks and no metadata, so its results would go nowhere"
    ));
    assert!(lines[2].contains("b.yaml: YAML syntax error at line 3 column 1"));
    assert_eq!(lines[3], "3 error(s); configuration not valid");
    assert!(output.stdout.is_empty());
}

#[test]
fn check_exits_0_on_the_shipped_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The example box has a USB camera at /dev/video0: without one, that is its only error.
    let has_camera = std::fs::metadata("/dev/video0")
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
    for file in ["config/visiond.yaml", "config/demo.yaml"] {
        // The passwords the example names, as /etc/visiond/env would give them.
        let output = visiond()
            .current_dir(root)
            .args(["check", "-c", file])
            .env("FRONT_DOOR_PASSWORD", "example")
            .env("VISIOND_RTSP_PASSWORD", "example")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if file == "config/visiond.yaml" && !has_camera {
            assert_eq!(output.status.code(), Some(2), "{file}: {stderr}{stdout}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 2, "{stderr}");
            assert!(
                lines[0].ends_with(
                    "document-desk.yaml: source.v4l2.device: /dev/video0 does not exist (is the camera plugged in? `v4l2-ctl --list-devices` lists the devices)"
                ),
                "{stderr}"
            );
            continue;
        }
        assert_eq!(output.status.code(), Some(0), "{file}: {stderr}{stdout}");
        assert!(stdout.starts_with(&format!("{file}: OK: ")), "{stdout}");
    }
}

#[test]
fn a_missing_daemon_file_is_one_clear_error() {
    let output = visiond()
        .args(["check", "-c", "/nonexistent/visiond.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .starts_with("/nonexistent/visiond.yaml: cannot read file: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn hub_models_are_checked_in_the_cache_without_downloading() {
    let tree = Tree::new("pipelines_dir: pipelines\nmodels:\n  depth: { hub: Intel/dpt-large }\n");
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let hf_home = tempfile::tempdir().unwrap();
    let check = |offline: bool| {
        let mut command = visiond();
        command
            .args(["check", "-c"])
            .arg(tree.path("visiond.yaml"))
            .env("HF_HOME", hf_home.path())
            .env_remove("HF_HUB_CACHE");
        if offline {
            command.env("HF_HUB_OFFLINE", "1");
        } else {
            command.env_remove("HF_HUB_OFFLINE");
        }
        command.output().unwrap()
    };
    let d = tree.file("visiond.yaml");
    // Online: a miss is only a warning, the daemon will download at start.
    let online = check(false);
    assert_eq!(online.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&online.stderr);
    assert!(
        stderr.starts_with(&format!(
            "warning: {d}: models.depth.hub: Intel/dpt-large@main is not in the Hugging Face cache ({}/hub); it will be downloaded at start (hf download Intel/dpt-large --revision main",
            hf_home.path().display()
        )),
        "{stderr}"
    );
    // Offline: the daemon could not start it, so it is an error that says how to fetch it.
    let offline = check(true);
    assert_eq!(offline.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert!(
        stderr.starts_with(&format!("{d}: models.depth.hub: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("hf download Intel/dpt-large --revision main"),
        "{stderr}"
    );
    // Cached: the snapshot is inspected like a local folder, and the check passes quietly.
    let repo = hf_home.path().join("hub/models--Intel--dpt-large");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    let snapshot = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tree.path("model").join(file), snapshot.join(file)).unwrap();
    }
    let cached = check(true);
    assert_eq!(
        cached.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cached.stderr)
    );
    assert!(
        cached.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&cached.stderr)
    );
}

#[test]
fn a_source_launch_fragment_is_parsed_at_check_time() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: door\nsource: { launch: \"nosuchcamerasrc ! videoconvert\" }\nmodel: none\nmetadata:\n  - jsonl: { stdout: true }\n",
    );
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![format!(
            "{p}: source.launch: GStreamer cannot build 'nosuchcamerasrc ! videoconvert': no element \"nosuchcamerasrc\""
        )]
    );
}

#[test]
fn a_depth16_sink_needs_matroska_and_a_model() {
    let tree = Tree::new(DAEMON);
    tree.pipeline(
        "door.yaml",
        "name: door\nsource: { test: {} }\nmodel: none\nsinks:\n  - depth16: { path: ../out/depth.mp4 }\n",
    );
    let p = tree.file("pipelines/door.yaml");
    assert_eq!(
        tree.errors(),
        vec![
            format!(
                "{p}: sinks[0].depth16.path: 16-bit depth is written as Matroska: use a .mkv path"
            ),
            format!("{p}: sinks[0].depth16: needs a depth model (the pipeline's model is 'none')"),
        ]
    );
}

#[test]
fn a_cuda_device_this_machine_lacks_is_an_error_at_check_time() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nmodels:\n  depth: { path: model, device: \"cuda:7\" }\n",
    );
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let d = tree.file("visiond.yaml");
    let errors = tree.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    // How many GPUs there are depends on the box; the message says which.
    assert!(
        errors[0].starts_with(&format!(
            "{d}: models.depth.device: device cuda:7 requested but "
        )),
        "{}",
        errors[0]
    );
}

#[test]
fn mounts_that_differ_only_in_slashes_are_one_mount() {
    let tree = Tree::new(DAEMON);
    let pipeline = |name: &str, mount: &str| {
        format!(
            "name: {name}\nsource: {{ test: {{ width: 64, height: 48 }} }}\nmodel: none\nsinks:\n  - rtsp: {{ mount: \"{mount}\" }}\n"
        )
    };
    tree.pipeline("a.yaml", &pipeline("a", "/same"))
        .pipeline("b.yaml", &pipeline("b", "/same/"))
        .pipeline("c.yaml", &pipeline("c", "//same"));
    let errors = tree.errors();
    let duplicates: Vec<&String> = errors
        .iter()
        .filter(|e| e.contains("mount /same is already served by"))
        .collect();
    assert_eq!(duplicates.len(), 2, "{errors:#?}");
}

#[test]
fn absurd_lengths_and_nesting_are_refused_at_once_without_echoing_them() {
    let tree = Tree::new(DAEMON);
    let long_name = "n".repeat(100_000);
    let long_uri = format!("rtsp://camera/{}", "x".repeat(300_000));
    tree.pipeline(
        "long.yaml",
        &format!("name: {long_name}\nsource: {{ uri: \"{long_uri}\" }}\nmodel: none\nsinks:\n  - rtsp: {{ mount: /long }}\n"),
    );
    let deep = format!(
        "name: deep\nsource: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    tree.pipeline("deep.yaml", &deep);
    let huge = format!("name: {}\n", "h".repeat(20 * 1024 * 1024));
    tree.pipeline("huge.yaml", &huge);
    let started = std::time::Instant::now();
    let errors = tree.errors();
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert!(
        errors.iter().all(|e| e.len() < 400),
        "an error echoes its input: {:?}",
        errors.iter().map(|e| e.len()).collect::<Vec<_>>()
    );
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(
        has("long.yaml: name: is 100000 characters long; at most 64"),
        "{errors:#?}"
    );
    assert!(
        has("long.yaml: source.uri: is 300014 characters long; at most 4096"),
        "{errors:#?}"
    );
    assert!(
        has("deep.yaml: nesting too deep: 100001 levels by line 2"),
        "{errors:#?}"
    );
    assert!(has("huge.yaml: file is 20971527 bytes"), "{errors:#?}");
}

#[test]
fn a_truncated_or_damaged_safetensors_file_fails_check() {
    let tree = Tree::new(DAEMON);
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    assert!(tree.load().is_ok(), "{:?}", tree.load().err());
    let weights = tree.path("model/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let (code, stderr) = {
        let output = visiond()
            .args(["check", "-c"])
            .arg(tree.path("visiond.yaml"))
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("models.depth.path:")
            && stderr.contains("model.safetensors: the file is")
            && stderr.contains("truncated or damaged"),
        "{stderr}"
    );
    // A header that is not JSON.
    let mut damaged = bytes.clone();
    damaged[8] = b'X';
    std::fs::write(&weights, &damaged).unwrap();
    let errors = tree.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not a valid safetensors file")),
        "{errors:#?}"
    );
}

#[test]
fn check_states_each_models_device_dtype_tf32_and_graphs() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nmodels:\n  \
         depth: { path: model, device: cpu }\n  \
         half: { path: model, device: cpu, dtype: f16, cuda_graphs: false }\n  \
         strict: { path: model, device: cpu, allow_tf32: false }\n",
    );
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let output = visiond()
        .args(["check", "-c"])
        .arg(tree.path("visiond.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  model "))
        .collect();
    assert_eq!(
        lines,
        [
            "  model depth: cpu, f32, TF32 on (applies on CUDA only), CUDA graphs on (applies on CUDA only)",
            "  model half: cpu, f16, TF32 n/a (f16 weights and activations), CUDA graphs off",
            "  model strict: cpu, f32, TF32 off (applies on CUDA only), CUDA graphs on (applies on CUDA only)",
        ],
        "{stdout}"
    );
}

#[test]
fn precision_keys_take_booleans_only() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nmodels:\n  depth: { path: model, allow_tf32: maybe }\n",
    );
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let errors = tree.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("models.depth.allow_tf32") && errors[0].contains("boolean"),
        "{}",
        errors[0]
    );
}

/// `visiond check -c` on the tree's daemon file: exit code and stderr lines.
fn check_lines(tree: &Tree, env: &[(&str, &str)], unset: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut command = visiond();
    command.args(["check", "-c"]).arg(tree.path("visiond.yaml"));
    for (name, value) in env {
        command.env(name, value);
    }
    for name in unset {
        command.env_remove(name);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code(),
        stderr.lines().map(str::to_string).collect(),
    )
}

#[test]
fn a_wrong_type_never_hides_a_range_error_beside_it() {
    let tree = Tree::new(
        "pipelines_dir: pipelines
outputs: { retry_initial_ms: 0, retry_max_ms: soon }
models:
  depth: { path: model, device: gpu, batch: { max_size: four } }
",
    );
    tree.pipeline(
        "door.yaml",
        "name: door
source: { test: { width: wide, height: 0 }, fps: 0, reconnect: { initial_ms: 0, max_ms: 1s } }
model: depth
queue: { capacity: 0, when_full: sometimes }
overlay: { alpha: 2, colormap: rainbow }
encoder: { keyframe_interval: 0, bitrate_kbps: fast }
sinks:
  - udp: { host: \"\", port: none }
  - file: { path: ../out/door.mp4, segment_s: 0, format: avi }
  - rtsp: { mount: [door] }
",
    );
    let d = tree.file("visiond.yaml");
    let p = tree.file("pipelines/door.yaml");
    let (code, lines) = check_lines(&tree, &[], &[]);
    assert_eq!(code, Some(2), "{lines:#?}");
    // Every type error and every range error of each section, in one run; nothing said about
    // the values put in place of the unreadable ones (the port, the mount).
    assert_eq!(
        lines,
        vec![
            format!("{d}: outputs.retry_max_ms: invalid type: string \"soon\", expected u64"),
            format!("{d}: outputs.retry_initial_ms: must be at least 1"),
            format!(
                "{d}: models.depth.device: unparsable device 'gpu': expected cpu, cuda, cuda:N or auto"
            ),
            format!(
                "{d}: models.depth.batch.max_size: invalid type: string \"four\", expected usize"
            ),
            format!("{p}: source.test.width: invalid type: string \"wide\", expected u32"),
            format!("{p}: source.reconnect.max_ms: invalid type: string \"1s\", expected u64"),
            format!("{p}: source.test.height: must be positive"),
            format!("{p}: source.fps: must be a positive number of frames per second"),
            format!("{p}: source.reconnect.initial_ms: must be at least 1"),
            format!(
                "{p}: queue.when_full: unknown variant `sometimes`, expected one of `drop_oldest`, `drop_newest`, `block`"
            ),
            format!("{p}: queue.capacity: must be at least 1"),
            format!(
                "{p}: overlay.colormap: unknown variant `rainbow`, expected one of `turbo`, `inferno`, `magma`, `viridis`, `grayscale`"
            ),
            format!("{p}: overlay.alpha: must be between 0 and 1"),
            format!("{p}: encoder.bitrate_kbps: invalid type: string \"fast\", expected u32"),
            format!("{p}: encoder.keyframe_interval: must be at least 1 frame"),
            format!("{p}: sinks[0].udp.port: invalid type: string \"none\", expected u16"),
            format!("{p}: sinks[0].udp.host: must not be empty"),
            format!("{p}: sinks[1].file.format: unknown variant `avi`, expected `mp4` or `mkv`"),
            format!("{p}: sinks[1].file.segment_s: must be at least 1 second"),
            format!("{p}: sinks[2].rtsp.mount: invalid type: sequence, expected a string"),
            "20 error(s); configuration not valid".to_string(),
        ]
    );
}

#[test]
fn check_fails_on_unset_password_variables_and_missing_video_devices() {
    let tree = Tree::new(
        "pipelines_dir: pipelines
rtsp: { auth: { username: viewer, password_env: VISIOND_TEST_UNSET_RTSP_PW } }
",
    );
    std::fs::write(tree.path("not-a-device"), "").unwrap();
    let metadata = "model: none\nmetadata:\n  - jsonl: { stdout: true }\n";
    tree.pipeline(
        "cam.yaml",
        "name: cam
source: { uri: rtsp://10.0.0.7/stream, credentials: { username: admin, password_env: VISIOND_TEST_UNSET_CAM_PW } }
model: none
sinks:
  - rtsp: { mount: /cam }
",
    )
    .pipeline(
        "lobby.yaml",
        "name: lobby\nsource: { uri: rtsp://10.0.0.8/stream, credentials: { username: admin, password_env: VISIOND_TEST_SET_CAM_PW } }\nmodel: none\nsinks:\n  - rtsp: { mount: /lobby }\n",
    )
    .pipeline(
        "usb.yaml",
        &format!("name: usb\nsource: {{ v4l2: {{ device: /dev/video-visiond-absent }} }}\n{metadata}"),
    )
    .pipeline(
        "file.yaml",
        &format!(
            "name: file\nsource: {{ v4l2: {{ device: {} }} }}\n{metadata}",
            tree.file("not-a-device")
        ),
    );
    let d = tree.file("visiond.yaml");
    let pipeline = |name: &str| tree.file(&format!("pipelines/{name}.yaml"));
    let (code, lines) = check_lines(
        &tree,
        &[("VISIOND_TEST_SET_CAM_PW", "pa/ss@word")],
        &["VISIOND_TEST_UNSET_RTSP_PW", "VISIOND_TEST_UNSET_CAM_PW"],
    );
    assert_eq!(code, Some(2), "{lines:#?}");
    let unset = |variable: &str| {
        format!(
            "environment variable {variable} is not set (or not UTF-8); `visiond run` reads the password from it (under systemd: the unit's Environment= or EnvironmentFile=)"
        )
    };
    assert_eq!(
        lines,
        vec![
            format!(
                "{d}: rtsp.auth.password_env: {}",
                unset("VISIOND_TEST_UNSET_RTSP_PW")
            ),
            format!(
                "{}: source.credentials.password_env: {}",
                pipeline("cam"),
                unset("VISIOND_TEST_UNSET_CAM_PW")
            ),
            format!(
                "{}: source.v4l2.device: {} is not a video device (not a character device)",
                pipeline("file"),
                tree.file("not-a-device")
            ),
            format!(
                "{}: source.v4l2.device: /dev/video-visiond-absent does not exist (is the camera plugged in? `v4l2-ctl --list-devices` lists the devices)",
                pipeline("usb")
            ),
            "4 error(s); configuration not valid".to_string(),
        ]
    );
    // With the variables set, the same tree is valid.
    let (code, lines) = check_lines(
        &tree,
        &[
            ("VISIOND_TEST_SET_CAM_PW", "x"),
            ("VISIOND_TEST_UNSET_RTSP_PW", "x"),
            ("VISIOND_TEST_UNSET_CAM_PW", "x"),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{lines:#?}");
    assert_eq!(lines.len(), 3, "only the two devices are left: {lines:#?}");
}

#[test]
fn check_warns_when_the_rtsp_server_is_reachable_beyond_loopback_without_auth() {
    let warning = |address: &str, reach: &str| {
        format!(
            "rtsp.address: the RTSP server listens on {address} ({reach}) without authentication: anyone who can reach this machine can watch every mount; set rtsp.auth, or rtsp.address: 127.0.0.1 to keep it on this machine"
        )
    };
    let cases = [
        ("", Some(warning("0.0.0.0", "every interface"))),
        (
            "rtsp: { address: \"::\" }\n",
            Some(warning("::", "every interface")),
        ),
        (
            "rtsp: { address: 192.168.1.20 }\n",
            Some(warning("192.168.1.20", "an address beyond loopback")),
        ),
        ("rtsp: { address: 127.0.0.1 }\n", None),
        ("rtsp: { address: \"::1\" }\n", None),
        (
            "rtsp: { auth: { username: viewer, password_env: VISIOND_TEST_RTSP_PW } }\n",
            None,
        ),
    ];
    for (rtsp, expected) in cases {
        let tree = Tree::new(&format!("pipelines_dir: pipelines\n{rtsp}"));
        tree.pipeline(
            "door.yaml",
            "name: door\nsource: { test: {} }\nmodel: none\nsinks:\n  - rtsp: { mount: /door }\n",
        );
        let (code, lines) = check_lines(&tree, &[("VISIOND_TEST_RTSP_PW", "x")], &[]);
        assert_eq!(code, Some(0), "{rtsp}: {lines:#?}");
        let expected: Vec<String> = expected
            .into_iter()
            .map(|w| format!("warning: {}: {w}", tree.file("visiond.yaml")))
            .collect();
        assert_eq!(lines, expected, "{rtsp}");
    }
    // Without an `rtsp` sink no server starts, so there is nothing to warn about.
    let tree = Tree::new(DAEMON);
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    assert_eq!(check_lines(&tree, &[], &[]), (Some(0), vec![]));
}

#[test]
fn served_models_are_checked_for_shape_and_processor_files_without_a_server() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nmodels:\n  depth: { path: model }\n\
         \x20 served:\n    remote: { url: \"grpc://127.0.0.1:8001\", model: dpt, version: 1 }\n    processor: { path: model }\n\
         \x20 both:\n    remote: { url: \"grpc://127.0.0.1:8001\", model: dpt }\n    path: model\n    cuda_graphs: false\n\
         \x20 bare:\n    remote: { url: \"triton:8001\", model: \"\", max_in_flight: 0, timeout_ms: 0 }\n\
         \x20 plain_tls:\n    remote: { url: \"grpc://h:1\", model: m, tls: { cert_file: c.pem } }\n    processor: { path: model }\n\
         \x20 no_config:\n    remote: { url: \"grpcs://h:1\", model: m, token_file: missing-token }\n    processor: { path: out }\n\
         \x20 stray:\n    path: model\n    processor: { path: model }\n",
    );
    let errors = tree.errors();
    let file = tree.file("visiond.yaml");
    let expected = [
        format!("{file}: models.both.path: not for a served model (`remote`)"),
        format!("{file}: models.both.cuda_graphs: not for a served model (`remote`)"),
        format!("{file}: models.both.processor: a served model needs `processor: {{ path: DIR }}`"),
        format!(
            "{file}: models.bare.remote.url: 'triton:8001' is not a gRPC address: expected grpc://host:port (plain) or grpcs://host:port (TLS)"
        ),
        format!("{file}: models.bare.remote.model: the model's name on the server is empty"),
        format!("{file}: models.bare.remote.timeout_ms: must be at least 1"),
        format!("{file}: models.bare.remote.max_in_flight: must be 1 to 64"),
        format!("{file}: models.bare.processor: a served model needs `processor: {{ path: DIR }}`"),
        format!(
            "{file}: models.plain_tls.remote.tls: set, but the url is plain (grpc://): use grpcs://host:port for TLS"
        ),
        format!(
            "{file}: models.plain_tls.remote.tls: mutual TLS needs both cert_file and key_file"
        ),
        format!(
            "{file}: models.no_config.processor.path: {}: not found",
            tree.path("out").join("config.json").display()
        ),
        format!(
            "{file}: models.no_config.remote.token_file: cannot read {}",
            tree.path("missing-token").display()
        ),
        format!("{file}: models.stray.processor: only for a served model (`remote`)"),
    ];
    for line in &expected {
        assert!(
            errors.iter().any(|e| e.starts_with(line.as_str())),
            "missing: {line}\nin:\n{}",
            errors.join("\n")
        );
    }
    // The valid served model is not reported at all.
    assert!(
        !errors.iter().any(|e| e.contains("models.served")),
        "{}",
        errors.join("\n")
    );
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));
}

#[test]
fn live_view_settings_are_checked_together() {
    let tree = Tree::new(
        "pipelines_dir: pipelines\nmodels:\n  depth: { path: model }\n\
         http:\n  view_token_file: missing.token\n  webrtc: { max_viewers: 0, stun: \"stun.example.org:3478\", turn: \"http://user:hunter2@relay.example.org\" }\n",
    );
    tree.pipeline("door.yaml", GOOD_PIPELINE);
    let d = tree.file("visiond.yaml");
    let errors = tree.errors();
    let mine: Vec<&String> = errors
        .iter()
        .filter(|e| e.contains("view_token_file") || e.contains("webrtc"))
        .collect();
    assert_eq!(mine.len(), 4, "{errors:#?}");
    assert!(
        mine[0].starts_with(&format!("{d}: http.view_token_file: ")),
        "{mine:?}"
    );
    assert!(mine[0].contains("missing.token"), "{mine:?}");
    assert_eq!(
        mine[1],
        &format!(
            "{d}: http.webrtc.max_viewers: must be at least 1 (each pipeline's live viewers at once)"
        )
    );
    assert_eq!(
        mine[2],
        &format!("{d}: http.webrtc.stun: stun.example.org:3478 is not a stun://host:port URL")
    );
    assert!(
        mine[3].starts_with(&format!("{d}: http.webrtc.turn: ")),
        "{mine:?}"
    );
    // The TURN password never appears in a message.
    assert!(!errors.iter().any(|e| e.contains("hunter2")), "{errors:#?}");
}
