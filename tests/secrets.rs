//! Credentials in sources and sinks stay out of everything the daemon shows: its log, the
//! unauthenticated `/api/pipelines` and `/readyz`, the summary, and `visiond check`. Cameras'
//! passwords hold `/` and `@`, so every one here does.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, Pipeline, Source, wait_until, write_tree};

/// One password per place it is written, each in three parts that must all stay hidden.
const PASSWORDS: [&str; 4] = [
    "Alpha7/Bravo@Charlie",
    "Delta8/Echo@Foxtrot",
    "Golf9/Hotel@India",
    "Juliet1/Kilo@Lima",
];

fn fragments() -> Vec<&'static str> {
    PASSWORDS.iter().flat_map(|p| p.split(['/', '@'])).collect()
}

/// Panics naming the first password fragment `text` holds.
fn assert_no_password(what: &str, text: &str) {
    for fragment in fragments() {
        assert!(
            !text.contains(fragment),
            "{what} shows a password ('{fragment}'):\n{text}"
        );
    }
}

/// A local port nothing listens on: connecting is refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The body of `url`, whatever its status (`/readyz` answers 503 while not ready).
fn body(url: &str) -> String {
    match ureq::get(url).call() {
        Ok(response) => response.into_string().unwrap(),
        Err(ureq::Error::Status(_, response)) => response.into_string().unwrap(),
        Err(error) => panic!("{url}: {error}"),
    }
}

#[test]
fn passwords_in_uris_and_launch_strings_never_reach_the_log_the_api_or_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let [rtsp_pw, http_pw, launch_pw, unbuildable_pw] = PASSWORDS;
    let camera = |name: &str, source: Source| {
        Pipeline::new(name)
            .source(source.reconnect(100, 400))
            .model("none")
            .jsonl(&dir.path().join(format!("{name}.jsonl")))
    };
    let file = write_tree(
        &dir.path().join("tree"),
        "",
        &[
            // A camera that refuses the connection, its password in the URI.
            camera(
                "rtsp",
                Source::uri(&format!("rtsp://admin:{rtsp_pw}@127.0.0.1:{port}/stream")),
            ),
            // souphttpsrc quotes its whole URL in its error.
            camera(
                "http",
                Source::uri(&format!("http://admin:{http_pw}@127.0.0.1:{port}/clip.mp4")),
            ),
            // A launch string with the password as a property, reconnected over and over.
            camera(
                "launch",
                Source::launch(&format!(
                    "rtspsrc location=rtsp://127.0.0.1:{port}/s user-id=admin user-pw=\"{launch_pw}\" ! application/x-rtp,media=video ! decodebin"
                )),
            ),
            // A launch string that parses on its own but cannot be built into a source (it
            // yields no video): it fails for good, quoting its description.
            camera(
                "unbuildable",
                Source::launch(&format!(
                    "souphttpsrc location=http://admin:{unbuildable_pw}@127.0.0.1:{port}/x ! fakesink"
                )),
            ),
        ],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(30),
    );
    let api = format!("http://{http}/api/pipelines");
    let state = |pipelines: &serde_json::Value, name: &str| {
        pipelines
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // Every live source has failed and been retried a few times, the unbuildable one failed.
    let mut listing = String::new();
    wait_until("every source to fail", Duration::from_secs(60), || {
        listing = body(&api);
        let pipelines: serde_json::Value = serde_json::from_str(&listing).unwrap();
        ["rtsp", "http", "launch"].iter().all(|name| {
            state(&pipelines, name)["attempt"]
                .as_u64()
                .is_some_and(|a| a >= 3)
        }) && state(&pipelines, "unbuildable")["state"] == "failed"
    });
    let pipelines: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_no_password("/api/pipelines", &listing);
    // What is shown still tells the operator what went wrong.
    let http_error = state(&pipelines, "http")["last_error"].to_string();
    assert!(
        http_error.contains("http://admin:***@127.0.0.1"),
        "{http_error}"
    );
    let unbuildable = state(&pipelines, "unbuildable")["error"].to_string();
    assert!(
        unbuildable.contains("location=http://admin:***@127.0.0.1"),
        "{unbuildable}"
    );
    assert_no_password("/readyz", &body(&format!("http://{http}/readyz")));
    let (_, log) = daemon.terminate();
    assert_no_password("the daemon's log and summary", &log);
    assert!(
        log.contains(&format!("source=rtsp://admin:***@127.0.0.1:{port}/stream")),
        "{log}"
    );
    assert!(log.contains("user-id=admin user-pw=\"***\""), "{log}");
    assert!(log.contains("unbuildable: failed: "), "{log}");
}

#[test]
fn check_masks_the_passwords_of_the_launch_strings_it_cannot_parse() {
    let dir = tempfile::tempdir().unwrap();
    let [source_pw, sink_pw, ..] = PASSWORDS;
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("door")
            .source(Source::launch(&format!(
                "rtspsrc location=\"rtsp://admin:{source_pw}@10.0.0.9/s\" nosuchprop=1 ! decodebin"
            )))
            .model("none")
            .launch_sink(&format!(
                "rtspclientsink location=rtsp://10.0.0.8/out user-id=cam user-pw={sink_pw} nosuchprop=2"
            ))],
    );
    let output = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_no_password("visiond check", &stderr);
    assert!(
        stderr.contains(
            "source.launch: GStreamer cannot build 'rtspsrc location=\"rtsp://admin:***@10.0.0.9/s\" nosuchprop=1 ! decodebin'"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("sinks[0].launch.pipeline: GStreamer cannot build 'rtspclientsink location=rtsp://10.0.0.8/out user-id=cam user-pw=*** nosuchprop=2'"),
        "{stderr}"
    );
}

#[test]
fn run_warns_in_its_log_when_its_rtsp_server_is_open_to_the_network_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    // The base tree leaves `rtsp.address` unset: every interface.
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(10))
            .model("none")
            .rtsp_sink("/cam")],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let warning = daemon.line(
        "rtsp.address: the RTSP server listens on 0.0.0.0 (every interface) without authentication",
        Duration::from_secs(30),
    );
    assert!(warning.contains("WARN"), "{warning}");
    // A warning, not a refusal: the server starts.
    daemon.field("RTSP server listening", "port", Duration::from_secs(30));
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}
