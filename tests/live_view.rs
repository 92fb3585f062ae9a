//! Live viewing in a browser, end to end: the real daemon (its binary) publishing test
//! patterns, and headless Chromium (Debian's) playing them on the status page and on
//! `/view/<name>`, over WebRTC (WHEP) and over MSE (fragmented MP4), with what the page
//! decoded read back from the page itself.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::free_port;
use serde_json::Value;

/// The daemon under test, stopped (SIGTERM, then waited for) when dropped.
struct Daemon {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon with `http` (extra `http:` keys) and one 640×480 30 frames/s test
/// pattern per name, each published on RTSP; returns once every pipeline plays.
fn daemon(http: &str, names: &[&str]) -> Daemon {
    daemon_with(http, names, "ball")
}

/// [`daemon`], the test patterns being `pattern` (`snow` makes large frames).
fn daemon_with(http: &str, names: &[&str], pattern: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rtsp = free_port();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("visiond.yaml"),
        format!(
            "http: {{ listen: \"127.0.0.1:{port}\"{http} }}\nrtsp: {{ port: {rtsp}, address: 127.0.0.1 }}\n\
             pipelines_dir: pipelines\nlog: {{ format: text, level: info }}\n"
        ),
    )
    .unwrap();
    for name in names {
        std::fs::write(
            dir.path().join(format!("pipelines/{name}.yaml")),
            format!(
                "name: {name}\nsource:\n  test: {{ pattern: {pattern}, width: 640, height: 480, fps: 30 }}\n\
                 model: none\nsinks:\n  - rtsp: {{ mount: /{name} }}\n"
            ),
        )
        .unwrap();
    }
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .args(["run", "--config"])
        .arg(dir.path().join("visiond.yaml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = Daemon {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let playing = pipelines(port)
            .map(|list| {
                list.as_array().is_some_and(|l| {
                    l.len() == names.len()
                        && l.iter()
                            .all(|p| p["state"] == "playing" && p["frames_out"].as_u64() > Some(0))
                })
            })
            .unwrap_or(false);
        if playing {
            return daemon;
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("the daemon exited ({status}):\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not play its pipelines within 30 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Daemon {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's file descriptors, threads and resident memory (KiB) now.
    fn resources(&self) -> (usize, usize, u64) {
        let proc = format!("/proc/{}", self.child.id());
        let count = |dir: &str| std::fs::read_dir(format!("{proc}/{dir}")).unwrap().count();
        let status = std::fs::read_to_string(format!("{proc}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (count("fd"), count("task"), rss)
    }

    /// What its threads are named and what its descriptors point at, counted (for a message).
    fn census(&self) -> String {
        let proc = format!("/proc/{}", self.child.id());
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for task in std::fs::read_dir(format!("{proc}/task")).unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            *counts.entry(format!("thread {}", name.trim())).or_default() += 1;
        }
        for fd in std::fs::read_dir(format!("{proc}/fd")).unwrap().flatten() {
            let target = std::fs::read_link(fd.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let kind = target.split(':').next().unwrap_or("").to_string();
            *counts.entry(format!("fd {kind}")).or_default() += 1;
        }
        format!("{counts:#?}")
    }

    /// `viewers` of pipeline `name` in /api/pipelines.
    fn viewers(&self, name: &str) -> Value {
        pipelines(self.port)
            .and_then(|l| l.as_array()?.iter().find(|p| p["name"] == name).cloned())
            .map(|p| p["viewers"].clone())
            .unwrap_or_default()
    }
}

fn pipelines(port: u16) -> Option<Value> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/api/pipelines"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// How each named player on `page` plays, and the frames its `<video>` decoded.
fn players(browser: &mut Browser, page: &Page, names: &[&str]) -> Vec<(String, u64, String)> {
    names
        .iter()
        .map(|name| {
            let state = browser.eval(
                page,
                &format!(
                    "(() => {{ const p = (window.visiondPlayers || {{}})[{name:?}]; if (!p) return null; \
                     const q = p.video.getVideoPlaybackQuality(); \
                     return {{ via: p.via, reason: p.reason, decoded: q.totalVideoFrames }}; }})()"
                ),
            );
            (
                state["via"].as_str().unwrap_or("none").to_string(),
                state["decoded"].as_u64().unwrap_or(0),
                state["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits (at most `within`) until every named player plays `via` with at least `frames`
/// decoded; what each had at the end.
fn wait_for_frames(
    browser: &mut Browser,
    page: &Page,
    names: &[&str],
    via: &str,
    frames: u64,
    within: Duration,
) -> Vec<(String, u64, String)> {
    let deadline = Instant::now() + within;
    loop {
        let seen = players(browser, page, names);
        if seen
            .iter()
            .all(|(how, decoded, _)| how == via && *decoded >= frames)
            || Instant::now() > deadline
        {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_status_page_plays_two_pipelines_live_over_webrtc_and_over_mse() {
    let daemon = daemon("", &["front", "back"]);
    let mut browser = Browser::launch();
    let names = ["front", "back"];
    // WebRTC first, as the page tries it: ≥ 60 frames decoded in each tile within 10 s of
    // opening the page.
    let page = browser.open(&daemon.url("/"));
    let seen = wait_for_frames(
        &mut browser,
        &page,
        &names,
        "webrtc",
        60,
        Duration::from_secs(10),
    );
    assert!(
        seen.iter()
            .all(|(via, decoded, _)| via == "webrtc" && *decoded >= 60),
        "WebRTC: {seen:?}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.viewers("front")["webrtc"], 1);
    assert_eq!(daemon.viewers("back")["webrtc"], 1);
    // The same count in /metrics, as Prometheus reads it.
    let text = ureq::get(&daemon.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let viewers = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "visiond_webrtc_viewers"
                && s.labels.get("pipeline") == Some("front")
                && s.labels.get("kind") == Some("webrtc")
        })
        .map(|s| s.value.clone());
    assert_eq!(viewers, Some(prometheus_parse::Value::Gauge(1.0)));
    browser.close(page);

    // Forced to MSE.
    let page = browser.open(&daemon.url("/?live=mse"));
    let seen = wait_for_frames(
        &mut browser,
        &page,
        &names,
        "mse",
        60,
        Duration::from_secs(10),
    );
    assert!(
        seen.iter()
            .all(|(via, decoded, _)| via == "mse" && *decoded >= 60),
        "MSE: {seen:?}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.viewers("front")["mse"], 1);
    browser.close(page);
    // The pages said goodbye: no viewer is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (daemon.viewers("front")["webrtc"] != 0 || daemon.viewers("front")["mse"] != 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let viewers = daemon.viewers("front");
    assert_eq!(
        (&viewers["webrtc"], &viewers["mse"]),
        (&0.into(), &0.into()),
        "{viewers}"
    );
}

/// Waits until pipeline `name` has `webrtc` WebRTC viewers, at most `within`; how long it took.
fn wait_for_viewers(
    daemon: &Daemon,
    name: &str,
    webrtc: u64,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if daemon.viewers(name)["webrtc"].as_u64() == Some(webrtc) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Opens `/view/<name>?live=webrtc` and waits until it plays (or `within` passes).
fn open_viewer(
    browser: &mut Browser,
    daemon: &Daemon,
    name: &str,
    within: Duration,
) -> (Page, (String, u64, String)) {
    let page = browser.open(&daemon.url(&format!("/view/{name}?live=webrtc")));
    let seen = wait_for_frames(browser, &page, &[name], "webrtc", 1, within);
    (page, seen.into_iter().next().unwrap())
}

#[test]
fn viewers_come_and_go_without_a_trace_and_one_too_many_is_refused() {
    const ROUNDS: usize = 50;
    let daemon = daemon(", webrtc: { max_viewers: 2 }", &["cam"]);
    let mut browser = Browser::launch();
    // One viewer first, so that what the first one sets up for good (GStreamer's plugins
    // loaded, libnice's and DTLS's state) is in the baseline.
    let (page, seen) = open_viewer(&mut browser, &daemon, "cam", Duration::from_secs(10));
    assert_eq!(seen.0, "webrtc", "{seen:?}\n{}", daemon.log());
    browser.close(page);
    assert!(wait_for_viewers(&daemon, "cam", 0, Duration::from_secs(10)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let before = daemon.resources();

    // Fifty viewers, one after the other: each plays, then its page closes (its DELETE).
    for round in 0..ROUNDS {
        let (page, seen) = open_viewer(&mut browser, &daemon, "cam", Duration::from_secs(10));
        assert_eq!(
            seen.0,
            "webrtc",
            "viewer {round}: {seen:?}\n{}",
            daemon.log()
        );
        browser.close(page);
        assert!(
            wait_for_viewers(&daemon, "cam", 0, Duration::from_secs(10)).is_some(),
            "viewer {round} was not let go: {}",
            daemon.viewers("cam")
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = daemon.resources();
    eprintln!("fds, threads, RSS KiB: before {before:?}, after 50 viewers {after:?}");
    if after.0 != before.0 {
        eprintln!("{}\n{}", daemon.census(), daemon.log());
    }
    assert_eq!(
        after.0, before.0,
        "file descriptors: {before:?} -> {after:?}"
    );
    assert!(after.1 <= before.1 + 2, "threads: {before:?} -> {after:?}");
    assert!(
        after.2 <= before.2 + before.2 / 10,
        "resident memory grew more than 10 %: {before:?} -> {after:?}"
    );

    // max_viewers (2) play; the third is refused with the reason, and falls back to snapshots.
    let (first, seen) = open_viewer(&mut browser, &daemon, "cam", Duration::from_secs(10));
    assert_eq!(seen.0, "webrtc");
    let (second, seen) = open_viewer(&mut browser, &daemon, "cam", Duration::from_secs(10));
    assert_eq!(seen.0, "webrtc");
    let third = browser.open(&daemon.url("/view/cam"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let seen = players(&mut browser, &third, &["cam"]).remove(0);
        if seen.0 == "snapshot" || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused.0, "snapshot", "{refused:?}");
    assert!(
        refused.2.contains("WebRTC: pipeline 'cam' takes no more viewers: it already has 2 live viewers (http.webrtc.max_viewers)")
            && refused.2.contains("MSE: pipeline 'cam' takes no more viewers"),
        "{refused:?}"
    );
    assert_eq!(daemon.viewers("cam")["webrtc"], 2);
    browser.close(third);
    browser.close(first);
    browser.close(second);
    assert!(wait_for_viewers(&daemon, "cam", 0, Duration::from_secs(10)).is_some());

    // A viewer that vanishes without a word (its browser killed): its session ends on its own.
    let mut doomed = Browser::launch();
    let (_page, seen) = open_viewer(&mut doomed, &daemon, "cam", Duration::from_secs(10));
    assert_eq!(seen.0, "webrtc");
    assert_eq!(daemon.viewers("cam")["webrtc"], 1);
    doomed.kill();
    let gone = wait_for_viewers(&daemon, "cam", 0, Duration::from_secs(60));
    eprintln!("a vanished viewer was let go after {gone:?}");
    assert!(
        gone.is_some(),
        "a vanished viewer is still counted after 60 s"
    );
    assert!(
        daemon.log().contains("WebRTC viewer ended"),
        "{}",
        daemon.log()
    );
}

/// `GET path` with `Authorization: Bearer token` (when given): the status, `Content-Type` and
/// the first `limit` bytes of the body.
fn get(daemon: &Daemon, path: &str, token: Option<&str>, limit: usize) -> (u16, String, Vec<u8>) {
    let mut request = ureq::get(&daemon.url(path)).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{path}: {error}"),
    };
    let status = response.status();
    let content_type = response.header("Content-Type").unwrap_or("").to_string();
    let mut body = Vec::new();
    use std::io::Read;
    let _ = response
        .into_reader()
        .take(limit as u64)
        .read_to_end(&mut body);
    (status, content_type, body)
}

#[test]
fn with_a_view_token_watching_needs_it_and_the_page_passes_it_on() {
    let secrets = tempfile::tempdir().unwrap();
    let (view, write) = ("view-7f3a9c0d5e81b24f", "write-51be02c7a9d4e613");
    std::fs::write(secrets.path().join("view.token"), format!("{view}\n")).unwrap();
    std::fs::write(secrets.path().join("write.token"), format!("{write}\n")).unwrap();
    let daemon = daemon(
        &format!(
            ", view_token_file: {}, token_file: {}",
            secrets.path().join("view.token").display(),
            secrets.path().join("write.token").display()
        ),
        &["cam"],
    );
    for path in [
        "/api/pipelines/cam/live.mp4",
        "/api/pipelines/cam/snapshot.jpg",
    ] {
        for token in [None, Some("wrong")] {
            let (status, _, body) = get(&daemon, path, token, 4096);
            assert_eq!(status, 401, "{path} with {token:?}");
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("http.view_token_file"), "{body}");
        }
    }
    // The view token and the write token both watch: an MSE stream starts with its `ftyp`.
    for token in [view, write] {
        let (status, content_type, body) =
            get(&daemon, "/api/pipelines/cam/live.mp4", Some(token), 64);
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("video/mp4; codecs=\"avc1."),
            "{content_type}"
        );
        assert_eq!(&body[4..8], b"ftyp");
    }
    let (status, content_type, _) = get(&daemon, "/api/pipelines/cam/snapshot.jpg", Some(view), 16);
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    // The page takes the token from its address's fragment (never sent to the server) and
    // sends it as a header: it plays over WebRTC.
    {
        let mut browser = Browser::launch();
        let page = browser.open(&daemon.url(&format!("/view/cam#token={view}")));
        let seen = wait_for_frames(
            &mut browser,
            &page,
            &["cam"],
            "webrtc",
            30,
            Duration::from_secs(10),
        );
        assert!(seen[0].0 == "webrtc" && seen[0].1 >= 30, "{seen:?}");
    }
    let log = daemon.log();
    assert!(
        !log.contains(view) && !log.contains(write),
        "a token in the log:\n{log}"
    );
}

/// `frames_out` and `dropped.output` of pipeline `name`.
fn frames(daemon: &Daemon, name: &str) -> (u64, u64) {
    let pipeline = pipelines(daemon.port)
        .and_then(|l| l.as_array()?.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_default();
    (
        pipeline["frames_out"].as_u64().unwrap_or(0),
        pipeline["dropped"]["output"].as_u64().unwrap_or(0),
    )
}

#[test]
fn a_viewer_that_stops_reading_loses_frames_alone() {
    use std::io::{Read, Write};
    // Long enough for the stalled viewer's socket buffers and queue to fill (about 20 s).
    const READING_S: u64 = 45;
    let daemon = daemon_with("", &["cam"], "snow");
    // A viewer that asks for the stream and then reads nothing, with a small window.
    let stalled = {
        let socket = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        let size: libc::c_int = 4096;
        // SAFETY: the descriptor is the open socket's, the value an int that outlives the call.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let mut socket = socket;
        socket
            .write_all(b"GET /api/pipelines/cam/live.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        socket
    };
    // A viewer that keeps up, reading all the while.
    let reader = std::thread::spawn({
        let url = daemon.url("/api/pipelines/cam/live.mp4");
        move || {
            let response = ureq::get(&url).call().unwrap();
            let mut body = response.into_reader();
            let (mut buffer, mut fragments, mut tail) = (vec![0u8; 65536], 0usize, Vec::new());
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(READING_S) {
                let read = body.read(&mut buffer).unwrap();
                tail.extend_from_slice(&buffer[..read]);
                fragments += tail.windows(4).filter(|w| w == b"moof").count();
                let keep = tail.len().saturating_sub(3);
                tail.drain(..keep);
            }
            fragments
        }
    });
    let (out_before, dropped_before) = frames(&daemon, "cam");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(READING_S - 5);
    while daemon.viewers("cam")["dropped"].as_u64().unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Both are still watching.
    let watching = daemon.viewers("cam");
    let fragments = reader.join().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let (out_after, dropped_after) = frames(&daemon, "cam");
    let viewers = daemon.viewers("cam");
    eprintln!(
        "in {seconds:.1} s: {} frames out, the reader got {fragments} fragments, the stalled viewer lost {}",
        out_after - out_before,
        viewers["dropped"]
    );
    assert!(
        viewers["dropped"].as_u64() > Some(0),
        "the stalled viewer lost nothing: {viewers}"
    );
    assert_eq!(watching["mse"], 2, "{watching}");
    // The pipeline kept its pace and dropped nothing; the reading viewer got nearly every frame.
    assert_eq!(dropped_after, dropped_before);
    let rate = (out_after - out_before) as f64 / seconds;
    assert!(rate > 25.0, "the pipeline slowed to {rate:.1} frames/s");
    assert!(
        fragments as f64 >= 0.9 * (out_after - out_before) as f64,
        "the reading viewer got {fragments} of {} frames",
        out_after - out_before
    );
    drop(stalled);
}

#[test]
fn a_live_stream_is_not_displaced_by_a_flood_of_idle_connections() {
    use std::io::{Read, Write};
    let daemon = daemon(", max_connections: 4", &["cam"]);
    let url = daemon.url("/api/pipelines/cam/live.mp4");
    // Bytes the viewer read in each second, for 10 s.
    let reader = std::thread::spawn(move || {
        let mut body = ureq::get(&url).call().unwrap().into_reader();
        let mut per_second = vec![0usize; 10];
        let mut buffer = vec![0u8; 65536];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            match body.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => per_second[started.elapsed().as_secs().min(9) as usize] += read,
            }
        }
        per_second
    });
    std::thread::sleep(Duration::from_secs(2));
    // Twenty connections that send nothing, and ten that send half a request head.
    let mut flood = Vec::new();
    for n in 0..30 {
        if let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", daemon.port)) {
            if n % 3 == 0 {
                let _ = socket.write_all(b"GET /healthz HTTP/1.1\r\nHo");
            }
            flood.push(socket);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = ureq::get(&daemon.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .call()
        .map(|r| r.status());
    assert_eq!(health.ok(), Some(200), "/healthz under the flood");
    let per_second = reader.join().unwrap();
    eprintln!("bytes the viewer read each second: {per_second:?}");
    assert!(
        per_second[3..].iter().all(|&bytes| bytes > 0),
        "the live stream stopped during the flood: {per_second:?}"
    );
    drop(flood);
}
