//! The control plane against hostile and careless clients, on `visiond run` itself, over real
//! sockets:
//! - a burst of real requests beyond the connection cap is served; hundreds of idle and
//!   half-sent connections under a small descriptor limit: `/healthz` still answers, the
//!   daemon's descriptors stay bounded, every connection is closed (header and idle
//!   timeouts, the connection cap), and each closing is counted in `/metrics`;
//! - `PUT` is held to `http.writes` (no `launch`, files only inside the allowed directories);
//! - `PUT` never overwrites another pipeline's file, never follows a planted temporary-file
//!   link, and leaves no temporary file behind when it fails;
//! - the token is checked before the body is read, a body that stalls is given up on, a
//!   broken token file tells the client nothing, the `Bearer` scheme is case-insensitive;
//! - `http.allowed_hosts`, `nosniff` on every response and the status page's CSP.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

use common::*;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn live(name: &str, dir: &Path) -> Pipeline {
    Pipeline::new(name)
        .source(Source::test(64, 48).fps(30))
        .model("none")
        .jsonl(&dir.join(format!("{name}.jsonl")))
}

/// A daemon file in `dir` whose `http` section is `listen` on a free port plus `http`.
fn tree(dir: &Path, http: &str, pipelines: &[Pipeline]) -> PathBuf {
    let file = write_tree(dir, "", pipelines);
    set_http(&file, http);
    file
}

fn set_http(file: &Path, http: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("http:")).collect();
    std::fs::write(
        file,
        format!(
            "{}\nhttp: {{ listen: \"127.0.0.1:0\", {http} }}\n",
            kept.join("\n")
        ),
    )
    .unwrap();
}

fn address(daemon: &mut Daemon) -> SocketAddr {
    daemon
        .field(
            "control plane listening",
            "address",
            Duration::from_secs(30),
        )
        .parse()
        .unwrap()
}

/// An agent that opens a new connection for every request, as a fresh client would.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_idle_connections(0)
        .build()
}

struct Reply {
    status: u16,
    nosniff: bool,
    body: Json,
}

/// A request with `headers` and an optional body; the status, whether the response was
/// `nosniff`, and the body as JSON (or as a string when it is not JSON).
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut request = agent().request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let response = match response {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let nosniff = response.header("x-content-type-options") == Some("nosniff");
    let text = response.into_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Json::String(text));
    Reply {
        status,
        nosniff,
        body,
    }
}

fn put(base: &str, name: &str, body: &str) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    call(
        "PUT",
        &format!("{base}/api/pipelines/{name}"),
        &[("Authorization", &bearer)],
        Some(body),
    )
}

/// The messages of a `{"errors": [...]}` body.
fn errors(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {}", reply.body))
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn scrape(base: &str) -> Scrape {
    let reply = call("GET", &format!("{base}/metrics"), &[], None);
    assert_eq!(reply.status, 200);
    let text = reply.body.as_str().unwrap().to_string();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn closed(scrape: &Scrape, reason: &str) -> f64 {
    metric(
        scrape,
        "visiond_http_connections_closed_total",
        &[("reason", reason)],
    )
}

fn frames_out(base: &str, name: &str) -> u64 {
    let reply = call("GET", &format!("{base}/api/pipelines/{name}"), &[], None);
    reply.body["frames_out"].as_u64().unwrap_or(0)
}

/// Writes `request` on a new connection and reads until the server closes it (at most 30 s);
/// what it answered.
fn raw(address: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!(
            "no whole answer to {request:?} within 30 s ({error}); got {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits (until `deadline`) for the server to close `stream`; false if it did not.
fn closed_by_server(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return true,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(error) => panic!("reading a held connection: {error}"),
        }
    }
}

#[test]
fn a_flood_of_idle_and_half_sent_connections_cannot_starve_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let file = tree(
        out,
        "max_connections: 32, header_timeout_ms: 1500, idle_timeout_ms: 3000",
        &[live("live", out)],
    );
    // As an operator's LimitNOFILE=300 would: fewer descriptors than the flood has sockets.
    let mut daemon = Daemon::spawn_with_fd_limit(&file, 300);
    let address = address(&mut daemon);
    let base = format!("http://{address}");
    wait_until("frames out", Duration::from_secs(30), || {
        frames_out(&base, "live") > 0
    });
    let before = scrape(&base);
    let fds_before = metric(&before, "process_open_fds", &[]);
    assert_eq!(metric(&before, "visiond_http_connections_max", &[]), 32.0);

    // A burst of real requests beyond the cap is served, none cut off: a connection whose
    // request is waiting to be read is never the one displaced.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), format!("{base}/api/pipelines"));
            std::thread::spawn(move || {
                barrier.wait();
                call("GET", &url, &[], None).status
            })
        })
        .collect();
    for client in burst {
        assert_eq!(client.join().unwrap(), 200);
    }

    // 400 connections: every other one sends half a request's headers, the rest nothing.
    let mut flood: Vec<TcpStream> = (0..400)
        .map(|i| {
            let mut stream = TcpStream::connect(address).unwrap();
            if i % 2 == 1 {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            stream
        })
        .collect();
    // Liveness answers a fresh client every time, while the flood is held.
    for _ in 0..5 {
        let reply = call("GET", &format!("{base}/healthz"), &[], None);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, Some("ok")),
            "/healthz under the flood"
        );
    }
    let during = scrape(&base);
    assert!(metric(&during, "visiond_http_connections_open", &[]) <= 32.0);
    let fds_during = metric(&during, "process_open_fds", &[]);
    assert!(
        fds_during <= fds_before + 32.0 + 16.0,
        "descriptors grew from {fds_before} to {fds_during} with 400 sockets at a cap of 32"
    );
    // Every held connection is closed by the server: displaced at the cap, or timed out.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, stream) in flood.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream, deadline),
            "connection {i} of the flood is still open after 60 s"
        );
    }
    drop(flood);
    let after = scrape(&base);
    let evicted = closed(&after, "evicted");
    let counted = evicted
        + closed(&after, "header_timeout")
        + closed(&after, "idle_timeout")
        + metric(&after, "visiond_http_connections_refused_total", &[]);
    assert!(evicted > 0.0, "no connection made room at the cap");
    assert!(
        counted >= 400.0,
        "{counted} connections counted as closed or refused, of 400"
    );
    assert_eq!(
        metric(&after, "visiond_http_accept_errors_total", &[]),
        0.0,
        "the daemon ran out of descriptors"
    );

    // Without the flood, each timeout by itself: an idle connection, a keep-alive one after
    // its request, half-sent headers, and headers sent a byte at a time (slowloris).
    let idle_after = closed(&after, "idle_timeout");
    let header_after = closed(&after, "header_timeout");
    let started = Instant::now();
    let mut idle = TcpStream::connect(address).unwrap();
    let mut kept = TcpStream::connect(address).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut half = TcpStream::connect(address).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut slow = TcpStream::connect(address).unwrap();
    let mut trickle = slow.try_clone().unwrap();
    let trickling = std::thread::spawn(move || {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if trickle.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    for (what, stream, at_least) in [
        ("half-sent headers", &mut half, 1500),
        ("headers a byte at a time", &mut slow, 1500),
        ("an idle connection", &mut idle, 3000),
        ("a keep-alive connection after its request", &mut kept, 3000),
    ] {
        assert!(
            closed_by_server(stream, deadline),
            "{what}: not closed within 30 s"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(at_least),
            "{what}: closed after {elapsed:?}, before its timeout"
        );
    }
    trickling.join().unwrap();
    let last = scrape(&base);
    assert_eq!(closed(&last, "header_timeout") - header_after, 2.0);
    assert_eq!(closed(&last, "idle_timeout") - idle_after, 2.0);
    // The pipeline never noticed.
    let frames = frames_out(&base, "live");
    wait_until("more frames", Duration::from_secs(10), || {
        frames_out(&base, "live") > frames
    });
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn a_put_may_use_only_what_http_writes_allows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let allowed = out.join("allowed");
    let outside = out.join("outside");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    std::fs::write(out.join("token"), TOKEN).unwrap();
    let http = "token_file: token, writes: { dirs: [allowed] }";
    let file = tree(out, http, &[live("one", out)]);
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    let test_source = "source: { test: { width: 64, height: 48, fps: 30 } }\nmodel: none\n";
    let secret = outside.join("secret.txt");

    // GStreamer text: a launch source that reads any file, a launch sink that writes one.
    let reply = put(
        &base,
        "two",
        &format!(
            "source: {{ launch: \"filesrc location={} ! fakesink\" }}\nmodel: none\nmetadata: [{{ jsonl: {{ stdout: true }} }}]\n",
            secret.display()
        ),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let refused = errors(&reply);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("two.yaml: source.launch:")
            && refused[0].contains("http.writes: { allow_launch: true }"),
        "{refused:?}"
    );
    // Everything refused in one answer, each by its key.
    let copy = outside.join("copy");
    let reply = put(
        &base,
        "two",
        &format!(
            "{test_source}encoder: {{ properties: {{ option-string: \"stats={}\" }} }}\nsinks:\n  - launch: {{ pipeline: \"filesink location={}\" }}\n  - file: {{ path: {} }}\n  - depth16: {{ path: {} }}\nmetadata: [{{ jsonl: {{ path: {} }} }}]\n",
            outside.join("stats").display(),
            copy.display(),
            allowed.join("../outside/escape.mp4").display(),
            allowed.join("link/depth.mkv").display(),
            outside.join("meta.jsonl").display(),
        ),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let refused = errors(&reply);
    for (key, says) in [
        ("encoder.properties", "allow_launch"),
        ("sinks[0].launch", "allow_launch"),
        ("sinks[1].file.path", "outside the directories"),
        ("sinks[2].depth16.path", "resolves to"),
        ("metadata[0].jsonl.path", "http.writes.dirs"),
    ] {
        assert!(
            refused
                .iter()
                .any(|e| e.contains(&format!("two.yaml: {key}:")) && e.contains(says)),
            "{key}: {refused:?}"
        );
    }
    assert_eq!(refused.len(), 5, "{refused:?}");
    // A file:// source outside the directories reads nothing.
    let reply = put(
        &base,
        "two",
        &format!(
            "source: {{ uri: \"file://{}\" }}\nmodel: none\nmetadata: [{{ jsonl: {{ stdout: true }} }}]\n",
            secret.display()
        ),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(errors(&reply)[0].contains("source.uri"), "{}", reply.body);
    // A camera's credentials may name only the variables the operator listed: otherwise a
    // write could send any of the daemon's secrets to a server of its choosing.
    let reply = put(
        &base,
        "two",
        "source: { uri: \"rtsp://attacker.example/x\", credentials: { username: u, password_env: HOME } }\nmodel: none\nmetadata: [{ jsonl: { stdout: true } }]\n",
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let refused = errors(&reply);
    assert!(
        refused.len() == 1
            && refused[0].contains("two.yaml: source.credentials.password_env:")
            && refused[0].contains("http.writes.password_envs"),
        "{refused:?}"
    );
    // Nothing was written, created or moved aside anywhere.
    assert!(!out.join("pipelines/two.yaml").exists());
    let mut left: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["secret.txt"]);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret\n");
    assert_eq!(
        std::fs::read_dir(&allowed).unwrap().count(),
        1,
        "only the link"
    );

    // Inside the directories it runs, and an existing file there is added to, not truncated.
    std::fs::write(allowed.join("two.jsonl"), "{\"kept\":true}\n").unwrap();
    let reply = put(&base, "two", &live("two", &allowed).yaml());
    assert_eq!(reply.status, 201, "{}", reply.body);
    wait_until("two's frames", Duration::from_secs(20), || {
        frames_out(&base, "two") > 2
    });
    let written = jsonl(&allowed.join("two.jsonl"));
    assert_eq!(written[0], serde_json::json!({"kept": true}));
    assert!(written.len() > 1);

    // The operator allows launch (a reload is enough): the same kind of PUT is taken.
    set_http(
        &file,
        "token_file: token, writes: { allow_launch: true, dirs: [allowed] }",
    );
    daemon.signal("HUP");
    let body = format!("{test_source}sinks: [{{ launch: {{ pipeline: \"fakesink\" }} }}]\n");
    wait_until("a launch sink taken", Duration::from_secs(30), || {
        let reply = put(&base, "three", &body);
        assert!(reply.status == 403 || reply.status == 201, "{}", reply.body);
        reply.status == 201
    });
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("PUT refused"), "{log}");
    assert!(!log.contains("take effect at the next restart"), "{log}");
}

#[test]
fn a_put_never_overwrites_another_file_nor_leaves_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let pipelines = out.join("pipelines");
    std::fs::write(out.join("token"), TOKEN).unwrap();
    let file = tree(
        out,
        "token_file: token, writes: { dirs: [.] }",
        &[live("door", out), live("two", out)],
    );
    // The operator keeps pipeline `door` in cam.yaml.
    let cam = pipelines.join("cam.yaml");
    std::fs::rename(pipelines.join("door.yaml"), &cam).unwrap();
    let operators = std::fs::read(&cam).unwrap();
    // Someone with write access to the directory planted the temporary file's old name.
    let victim = out.join("victim.txt");
    std::fs::write(&victim, "victim\n").unwrap();
    std::os::unix::fs::symlink(&victim, pipelines.join(".three.yaml.tmp")).unwrap();
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));

    // A new pipeline `cam` would land in cam.yaml, which holds `door`: refused, untouched.
    let reply = put(&base, "cam", &live("cam", out).yaml());
    assert_eq!(reply.status, 409, "{}", reply.body);
    let message = reply.body["error"].as_str().unwrap();
    assert!(
        message.contains("cam.yaml holds pipeline 'door'")
            && message.contains("nothing was written"),
        "{message}"
    );
    assert_eq!(std::fs::read(&cam).unwrap(), operators);
    let names = call("GET", &format!("{base}/api/pipelines"), &[], None).body;
    assert_eq!(names[0]["name"], "door", "{names}");
    assert_eq!(names.as_array().unwrap().len(), 2, "{names}");
    // Changing `door` itself goes to its own file.
    let reply = put(&base, "door", &live("door", out).yaml());
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!pipelines.join("door.yaml").exists());

    // A new pipeline beside the planted link: written as a file of its own, link not followed.
    let reply = put(&base, "three", &live("three", out).yaml());
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    let three = pipelines.join("three.yaml");
    assert!(std::fs::symlink_metadata(&three).unwrap().is_file());
    assert!(
        std::fs::read_to_string(&three)
            .unwrap()
            .contains("name: three")
    );

    // A write that fails (two.yaml became a directory): 500, and no temporary file left.
    let two = pipelines.join("two.yaml");
    std::fs::remove_file(&two).unwrap();
    std::fs::create_dir(&two).unwrap();
    std::fs::write(two.join("keep"), "keep").unwrap();
    let reply = put(&base, "two", &live("two", out).yaml());
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{}",
        reply.body
    );
    assert_eq!(std::fs::read_to_string(two.join("keep")).unwrap(), "keep");
    let mut hidden: Vec<String> = std::fs::read_dir(&pipelines)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    hidden.sort();
    assert_eq!(hidden, [".three.yaml.tmp"], "only the planted link is left");
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn unauthenticated_requests_are_refused_before_their_body_and_learn_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let token_file = out.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file = tree(
        out,
        "token_file: token, writes: { dirs: [.] }",
        &[live("one", out)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let address = address(&mut daemon);
    let base = format!("http://{address}");

    // A 1 MB body announced without a token: 401 before a byte of it is sent.
    let answer = raw(
        address,
        "PUT /api/pipelines/two HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\nContent-Length: 1048576\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("a valid bearer token is required"),
        "{answer}"
    );

    // With the token, a body that stops half-way is given up on after a while.
    let started = Instant::now();
    let answer = raw(
        address,
        &format!(
            "PUT /api/pipelines/two HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\nname: two\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the body did not arrive within 10 s"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_secs(10));

    // The scheme's name in any case.
    for (name, scheme) in [("two", "bearer"), ("three", "BEARER")] {
        let authorization = format!("{scheme} {TOKEN}");
        let reply = call(
            "PUT",
            &format!("{base}/api/pipelines/{name}"),
            &[("Authorization", &authorization)],
            Some(&live(name, out).yaml()),
        );
        assert_eq!(reply.status, 201, "{scheme}: {}", reply.body);
    }
    let wrong = call(
        "PUT",
        &format!("{base}/api/pipelines/four"),
        &[("Authorization", "Bearer wrong-token-wrong-token")],
        Some(&live("four", out).yaml()),
    );
    assert_eq!(wrong.status, 401);

    // A broken token file (too short), then none: a plain 500 without the file's name.
    std::fs::write(&token_file, "short\n").unwrap();
    let broken = put(&base, "four", &live("four", out).yaml());
    std::fs::remove_file(&token_file).unwrap();
    let missing = put(&base, "four", &live("four", out).yaml());
    for reply in [&broken, &missing] {
        assert_eq!(reply.status, 500, "{}", reply.body);
        let text = reply.body.to_string();
        assert!(
            !text.contains(&*out.to_string_lossy()) && !text.contains("token file"),
            "{text}"
        );
        assert!(
            text.contains("the daemon cannot check tokens now"),
            "{text}"
        );
    }
    assert!(!out.join("pipelines/four.yaml").exists());
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    // The operator finds the reason in the log.
    assert!(
        log.contains(&*token_file.to_string_lossy()),
        "the log does not name the token file: {log}"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");
}

#[test]
fn only_allowed_hosts_are_answered_and_every_response_is_nosniff() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    std::fs::write(out.join("token"), TOKEN).unwrap();
    let file = tree(
        out,
        "token_file: token, allowed_hosts: [\"127.0.0.1\", \"Visiond.Test:8080\"]",
        &[live("one", out)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let address = address(&mut daemon);
    let base = format!("http://{address}");

    let get = |host: &str| {
        raw(
            address,
            &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    for host in ["visiond.test:8080", &address.to_string()] {
        let answer = get(host);
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    for host in [
        "evil.example",
        "visiond.test:9090",
        "127.0.0.1.evil.example",
    ] {
        let answer = get(host);
        assert!(answer.starts_with("HTTP/1.1 421"), "{host}: {answer}");
        assert!(answer.contains("http.allowed_hosts"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("x-content-type-options: nosniff"),
            "{answer}"
        );
    }
    let answer = raw(address, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");

    // Every answer is nosniff: pages, JSON, text, errors, refusals.
    for (method, path, status) in [
        ("GET", "/healthz", 200),
        ("GET", "/api/pipelines", 200),
        ("GET", "/api/pipelines/one", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nope", 404),
        ("POST", "/metrics", 405),
        ("PUT", "/api/pipelines/two", 401),
    ] {
        let reply = call(method, &format!("{base}{path}"), &[], Some(""));
        assert_eq!(reply.status, status, "{method} {path}");
        assert!(reply.nosniff, "{method} {path} is not nosniff");
    }
    // The page: only its own script and style run (inline by their hash, and the player
    // from this daemon).
    let page = agent().get(&format!("{base}/")).call().unwrap();
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let policy = page.header("content-security-policy").unwrap().to_string();
    assert!(policy.starts_with("default-src 'none';"), "{policy}");
    assert!(
        policy.contains("script-src 'self' 'sha256-") && policy.contains("style-src 'sha256-"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe"), "{policy}");
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn bad_http_settings_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = tree(
        dir.path(),
        "max_connections: 0, header_timeout_ms: 10, idle_timeout_ms: 0, allowed_hosts: [], \
         writes: { allow_launch: false, dirs: [nowhere] }",
        &[live("one", dir.path())],
    );
    let errors: Vec<String> = visiond::preflight::load(&file)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    let nowhere = dir.path().join("nowhere");
    for expected in [
        "http.max_connections: must be between 1 and 65536".to_string(),
        "http.header_timeout_ms: must be at least 100".to_string(),
        "http.idle_timeout_ms: must be at least 100".to_string(),
        "http.allowed_hosts: lists no host, so every request would be refused".to_string(),
        format!(
            "http.writes.dirs[0]: {} is not a directory",
            nowhere.display()
        ),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("visiond.yaml: ") && e.contains(&expected)),
            "{expected}: {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 5, "{errors:#?}");
    set_http(
        &file,
        "allowed_hosts: [\"http://visiond.local/\", \"ok.local\"]",
    );
    let errors = visiond::preflight::load(&file).unwrap_err().to_string();
    assert!(
        errors.contains(
            "http.allowed_hosts[0]: 'http://visiond.local/' is not a host name or address, with or without :port"
        ) && !errors.contains("allowed_hosts[1]"),
        "{errors}"
    );
}
