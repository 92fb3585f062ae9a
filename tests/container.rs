//! The container image (`Containerfile`), built and run with podman: the self-contained install
//! of the binary under test packed by `scripts/dist`, on the Debian 12 base that
//! `scripts/setup` makes (debootstrap; no registry is reachable here). The container runs as its
//! own non-root user with `/etc/visiond` and `/var/lib/visiond` as volumes, answers `/healthz`
//! through a published port and its own `HEALTHCHECK`, runs the demo pipelines to the end with
//! their models, and drains on `podman stop`.
//!
//! This machine's sandbox lacks CAP_SYS_RESOURCE and mixes cgroup v1 and v2, so the test gives
//! podman what it needs to start a container there: runc (crun refuses hybrid cgroups) and
//! explicit rlimits no higher than the sandbox's (podman's defaults raise them).

mod common;
mod deploy_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The base image `scripts/setup` imports from a debootstrapped Debian 12 (bookworm, minbase).
const BASE: &str = "localhost/visiond-base:debian-12";
/// The user the image runs as.
const UID: u32 = 10001;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {}: {e} (scripts/setup installs podman)", args[0]))
}

/// What `podman run` and `podman build` need on this machine (see the module's comment).
const SANDBOX: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn replace_all(text: &str, pairs: &[(&str, &str)], file: &str) -> String {
    let mut text = text.to_owned();
    for (from, to) in pairs {
        assert!(text.contains(from), "{file} no longer has {from:?}");
        text = text.replace(from, to);
    }
    text
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `/etc/visiond` for the container: the demo configuration (`make demo`'s), with its models
/// beside it, its outputs under the state volume, its control plane on the container's port
/// 9090, and a live test pattern so the daemon stays up after the demo's finite sources end.
fn demo_configuration(etc: &Path) {
    let daemon = replace_all(
        &std::fs::read_to_string(repo().join("config/demo.yaml")).unwrap(),
        &[
            ("listen: \"127.0.0.1:9091\"", "listen: \"0.0.0.0:9090\""),
            (
                "rtsp: { port: 8555 }",
                "rtsp: { port: 8554, address: 127.0.0.1 }",
            ),
            (
                "pipelines_dir: ../pipelines/demo",
                "pipelines_dir: pipelines",
            ),
            ("../tests/fixtures/models/", "models/"),
        ],
        "config/demo.yaml",
    );
    std::fs::create_dir_all(etc.join("pipelines")).unwrap();
    std::fs::write(etc.join("visiond.yaml"), daemon).unwrap();
    for model in ["dpt-vit", "dit"] {
        copy_dir(
            &repo().join("tests/fixtures/models").join(model),
            &etc.join("models").join(model),
        );
    }
    for name in ["demo-depth.yaml", "demo-classify.yaml"] {
        let file = repo().join("pipelines/demo").join(name);
        let text = replace_all(
            &std::fs::read_to_string(&file).unwrap(),
            &[("../../out/", "/var/lib/visiond/")],
            name,
        );
        std::fs::write(etc.join("pipelines").join(name), text).unwrap();
    }
    std::fs::write(
        etc.join("pipelines/live-pattern.yaml"),
        "name: live-pattern\nsource:\n  test: { pattern: smpte, width: 320, height: 240, fps: 10 }\n\
         model: none\nsinks:\n  - rtsp: { mount: /pattern }\n",
    )
    .unwrap();
}

/// Removes what the test made in podman's storage, whatever happens.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.container]);
        let _ = podman(&["rmi", "--force", &self.image]);
    }
}

#[test]
fn the_image_runs_the_demo_as_a_non_root_user_and_answers_its_health_check() {
    let base = podman(&["image", "exists", BASE]);
    assert!(
        base.status.success(),
        "no {BASE} in podman's storage: scripts/setup imports it (debootstrap of Debian 12)\n{}",
        said(&base)
    );

    // The tarball `make dist` makes, of the binary under test (zstd -1: a test packs quickly).
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let dist = Command::new(repo().join("scripts/dist"))
        .args(["cuda", env!("CARGO_BIN_EXE_visiond")])
        .env("DIST_DIR", &context)
        .env("ZSTD_LEVEL", "1")
        .output()
        .unwrap();
    assert!(dist.status.success(), "scripts/dist: {}", said(&dist));
    let tarball = std::fs::read_dir(&context)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".tar.zst"))
        .expect("scripts/dist wrote a .tar.zst");

    let tag = format!("localhost/visiond-test:{}", std::process::id());
    let name = format!("visiond-test-{}", std::process::id());
    let _cleanup = Cleanup {
        container: name.clone(),
        image: tag.clone(),
    };
    let containerfile = repo().join("Containerfile");
    let mut build: Vec<String> = [
        "build",
        // The OCI image format has no HEALTHCHECK; docker's keeps it.
        "--format",
        "docker",
        "--pull=never",
        "--layers=false",
        "--network",
        "host",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    build.extend(SANDBOX.iter().map(|s| s.to_string()));
    build.extend([
        "--build-arg".into(),
        format!("BASE={BASE}"),
        "--build-arg".into(),
        format!("DIST={tarball}"),
        "-t".into(),
        tag.clone(),
        "-f".into(),
        containerfile.display().to_string(),
        context.display().to_string(),
    ]);
    let build_args: Vec<&str> = build.iter().map(String::as_str).collect();
    let built = podman(&build_args);
    // Its end only: apt's progress lines before it would push the cause out of a CI log.
    assert!(
        built.status.success(),
        "podman build failed; the end of what it said:\n{}",
        tail(&said(&built), 60)
    );

    // What the image declares.
    let declared = |field: &str| {
        let output = podman(&["image", "inspect", "--format", field, &tag]);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(declared("{{.Config.User}}"), "visiond");
    let volumes = declared("{{json .Config.Volumes}}");
    assert!(
        volumes.contains("/etc/visiond") && volumes.contains("/var/lib/visiond"),
        "{volumes}"
    );
    let healthcheck = declared("{{json .Config.Healthcheck}}");
    assert!(healthcheck.contains("/healthz"), "{healthcheck}");
    let size = podman(&["images", "--format", "{{.Size}}", &tag]);
    eprintln!(
        "image size: {}",
        String::from_utf8_lossy(&size.stdout).trim()
    );

    // The volumes: the demo's configuration, read-only; the state, owned by the image's user.
    let etc = dir.path().join("etc-visiond");
    demo_configuration(&etc);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(UID), Some(UID)).unwrap();
    let port = common::free_port();
    let mut run: Vec<String> = ["run", "--detach", "--name", &name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run.extend(SANDBOX.iter().map(|s| s.to_string()));
    run.extend([
        "--publish".into(),
        format!("127.0.0.1:{port}:9090"),
        "--volume".into(),
        format!("{}:/etc/visiond:ro", etc.display()),
        "--volume".into(),
        format!("{}:/var/lib/visiond", state.display()),
        tag.clone(),
    ]);
    let run_args: Vec<&str> = run.iter().map(String::as_str).collect();
    let started = podman(&run_args);
    assert!(started.status.success(), "podman run: {}", said(&started));
    let logs = || said(&podman(&["logs", &name]));

    // Both demo pipelines run to their end (300 frames each, through their models) while the
    // live one plays; /healthz answers through the published port.
    let deadline = Instant::now() + Duration::from_secs(240);
    let finished = loop {
        let pipelines: serde_json::Value = deploy_support::http_get(port, "/api/pipelines")
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        let done: Vec<(String, u64)> = pipelines
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["state"] == "finished")
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["frames_out"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if done.len() >= 2 || Instant::now() > deadline {
            break done;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut finished = finished;
    finished.sort();
    assert_eq!(
        finished,
        [
            ("demo-classify".to_owned(), 300),
            ("demo-depth".to_owned(), 300)
        ],
        "{}",
        logs()
    );
    let health = deploy_support::http_get(port, "/healthz").map(|h| h.0);
    assert_eq!(health.as_deref(), Some("HTTP/1.1 200 OK"), "{}", logs());
    // The image's own HEALTHCHECK, run by podman inside the container.
    let check = podman(&["healthcheck", "run", &name]);
    assert!(
        check.status.success(),
        "HEALTHCHECK: {}\n{}",
        said(&check),
        logs()
    );
    let whoami = podman(&["exec", &name, "id", "-u"]);
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout).trim(),
        UID.to_string()
    );

    // The recordings and results landed in the state volume.
    for file in [
        "demo-depth.mp4",
        "demo-depth.jsonl",
        "demo-classify.mp4",
        "demo-classify.jsonl",
    ] {
        let path = state.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{file} is missing or empty:\n{}", logs());
    }
    let results = std::fs::read_to_string(state.join("demo-depth.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 300);

    // podman stop sends SIGTERM: the daemon drains and exits 0.
    let stopped = podman(&["stop", "--time", "30", &name]);
    assert!(stopped.status.success(), "{}", said(&stopped));
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs()
    );
}
