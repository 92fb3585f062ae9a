//! The status page and snapshots: `/` is one static page; `snapshot.jpg` is a JPEG of the
//! pipeline's frame size; headless Chromium renders the page with every pipeline and no
//! console error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use visiond::control::ControlServer;
use visiond::pipeline::engine::Engine;
use visiond::pipeline::view::SharedView;

use common::*;

fn get(url: &str) -> (u16, String, Vec<u8>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("GET {url}: {error}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    (status, content_type, body)
}

/// Serves `view` on a free port; returns the base URL, and what keeps the server alive.
fn serve(view: SharedView) -> (String, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(ControlServer::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    runtime.spawn(server.serve(view, std::future::pending::<()>()));
    (base, runtime)
}

/// Headless Chromium on `url` for a few seconds: the DOM it rendered, and its log.
fn chromium(url: &str, profile: &Path) -> (String, String) {
    let binary = Path::new("/usr/bin/chromium");
    assert!(
        binary.exists(),
        "/usr/bin/chromium is not installed: scripts/setup installs Debian's chromium"
    );
    let output = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_status_page_lists_every_pipeline_and_snapshots_are_jpegs_of_the_frame() {
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[
            Pipeline::new("cam")
                .source(Source::test(160, 120).fps(30))
                .model("none")
                .file_sink_with(Path::new("/dev/null"), "format: mkv"),
            Pipeline::new("meta")
                .source(Source::test(64, 48).fps(30))
                .model("none")
                .jsonl(&out.path().join("meta.jsonl")),
        ],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let (base, _runtime) = serve(engine.view());
    wait_until("frames out", Duration::from_secs(20), || {
        engine.pipelines().iter().all(|p| p.stats.frames_out() > 5)
    });

    let (status, content_type, page) = get(&format!("{base}/"));
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<title>visiond</title>") && page.contains("api/pipelines"));

    // The snapshot: a JPEG of the frame the pipeline publishes.
    let (status, content_type, jpeg) = get(&format!("{base}/api/pipelines/cam/snapshot.jpg"));
    assert_eq!(
        (status, content_type.as_str()),
        (200, "image/jpeg"),
        "{}",
        String::from_utf8_lossy(&jpeg)
    );
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "not a JPEG");
    let file = out.path().join("cam.jpg");
    std::fs::write(&file, &jpeg).unwrap();
    let decoded = decode(&file, "jpegparse", "jpegdec");
    assert_eq!(
        (decoded.frames, decoded.width, decoded.height),
        (1, 160, 120)
    );
    // Asked again at once: served without encoding another (the same bytes).
    let (_, _, again) = get(&format!("{base}/api/pipelines/cam/snapshot.jpg"));
    assert_eq!(again, jpeg);
    // No video, no snapshot; no such pipeline, 404 too.
    let (status, _, body) = get(&format!("{base}/api/pipelines/meta/snapshot.jpg"));
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("publishes no video"));
    assert_eq!(
        get(&format!("{base}/api/pipelines/nope/snapshot.jpg")).0,
        404
    );
    let (_, _, listing) = get(&format!("{base}/api/pipelines"));
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    assert_eq!(listing[0]["snapshot"], true);
    assert_eq!(listing[1]["snapshot"], false);

    // The page as a browser renders it.
    let profile = tempfile::tempdir().unwrap();
    {
        let (dom, log) = chromium(&format!("{base}/"), profile.path());
        for name in ["cam", "meta"] {
            assert!(
                dom.contains(&format!("<span class=\"name\">{name}</span>")),
                "{dom}"
            );
        }
        assert!(dom.contains("2 pipeline(s): 2 playing"), "{dom}");
        // How old each source's last frame is.
        assert!(dom.contains("<dd class=\"last-frame\">0."), "{dom}");
        assert!(dom.contains("api/pipelines/cam/snapshot.jpg?t="), "{dom}");
        assert!(!dom.contains("api/pipelines/meta/snapshot.jpg"), "{dom}");
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "console messages: {console:#?}");
    }
    engine.shutdown_handle().trigger();
    engine.wait();
}
