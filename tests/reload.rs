//! Reload without restart, and pipelines managed over HTTP, on `visiond run` itself:
//! - SIGHUP with an added, a removed, a changed and an untouched pipeline does exactly that,
//!   and the untouched one's frame counter never stalls;
//! - SIGHUP with a broken file changes nothing;
//! - a model is reloaded only when its definition changed;
//! - `PUT`/`DELETE /api/pipelines/<name>` with and without the token, with an invalid body,
//!   and the file on disk after each.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

fn live(name: &str, dir: &Path) -> Pipeline {
    Pipeline::new(name)
        .source(Source::test(64, 48).fps(30))
        .model("none")
        .jsonl(&dir.join(format!("{name}.jsonl")))
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

/// Status, and the body as JSON (or as a string when it is not JSON).
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut request = agent.request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
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
    let text = response.into_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

fn pipelines(base: &str) -> Vec<Value> {
    let (status, body) = call("GET", &format!("{base}/api/pipelines"), None, None);
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn by_name<'a>(pipelines: &'a [Value], name: &str) -> Option<&'a Value> {
    pipelines.iter().find(|p| p["name"] == name)
}

fn names(base: &str) -> Vec<String> {
    pipelines(base)
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn frames_out(base: &str, name: &str) -> u64 {
    by_name(&pipelines(base), name)
        .and_then(|p| p["frames_out"].as_u64())
        .unwrap_or(0)
}

#[test]
fn sighup_adds_removes_and_restarts_what_changed_and_leaves_the_rest_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let file = write_tree(
        out,
        "",
        &[live("keep", out), live("change", out), live("remove", out)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    wait_until(
        "frames from every pipeline",
        Duration::from_secs(20),
        || {
            ["keep", "change", "remove"]
                .iter()
                .all(|name| frames_out(&base, name) > 5)
        },
    );
    let change_uptime = by_name(&pipelines(&base), "change").unwrap()["uptime_s"]
        .as_f64()
        .unwrap();
    let measured = Instant::now();
    std::thread::sleep(Duration::from_millis(500));

    let pipelines_dir = out.join("pipelines");
    std::fs::remove_file(pipelines_dir.join("remove.yaml")).unwrap();
    let changed = live("change", out).queue("{ capacity: 2 }");
    std::fs::write(pipelines_dir.join("change.yaml"), changed.yaml()).unwrap();
    std::fs::write(pipelines_dir.join("add.yaml"), live("add", out).yaml()).unwrap();
    let mut kept = vec![frames_out(&base, "keep")];
    daemon.signal("HUP");
    // The untouched pipeline keeps producing through the whole reload.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(400));
        kept.push(frames_out(&base, "keep"));
    }
    assert!(
        kept.windows(2).all(|w| w[1] > w[0]),
        "the untouched pipeline stalled: {kept:?}"
    );
    let line = daemon.line("configuration applied", Duration::from_secs(20));
    assert!(line.contains("added=[\"add\"]"), "{line}");
    assert!(line.contains("removed=[\"remove\"]"), "{line}");
    assert!(line.contains("restarted=[\"change\"]"), "{line}");
    assert!(line.contains("unchanged=1"), "{line}");
    assert_eq!(names(&base), ["add", "change", "keep"]);
    wait_until(
        "the new and the restarted pipelines play",
        Duration::from_secs(20),
        || {
            let all = pipelines(&base);
            ["add", "change"]
                .iter()
                .all(|name| by_name(&all, name).unwrap()["state"] == "playing")
        },
    );
    let after = pipelines(&base);
    let restarted = by_name(&after, "change").unwrap();
    assert_eq!(restarted["queue"]["capacity"], 2);
    // Not restarted, it would be this old; restarted after the SIGHUP (half a second after
    // that reading, at least), it is younger.
    let unrestarted = change_uptime + measured.elapsed().as_secs_f64();
    let uptime = restarted["uptime_s"].as_f64().unwrap();
    assert!(uptime < unrestarted - 0.4, "{uptime} vs {unrestarted}");
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn sighup_with_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let file = write_tree(out, "", &[live("one", out)]);
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    wait_until("frames", Duration::from_secs(20), || {
        frames_out(&base, "one") > 3
    });
    let uptime = by_name(&pipelines(&base), "one").unwrap()["uptime_s"]
        .as_f64()
        .unwrap();
    let broken = out.join("pipelines/broken.yaml");
    std::fs::write(
        &broken,
        "name: broken\nsource: { test: {} }\nmodel: nosuchmodel\n",
    )
    .unwrap();
    daemon.signal("HUP");
    let refused = daemon.line("new configuration refused", Duration::from_secs(20));
    assert!(refused.contains("errors=2"), "{refused}");
    // Every error was logged, naming the file.
    let (code, log) = {
        let before = frames_out(&base, "one");
        wait_until("frames keep coming", Duration::from_secs(10), || {
            frames_out(&base, "one") > before
        });
        assert_eq!(names(&base), ["one"]);
        let now = by_name(&pipelines(&base), "one").unwrap()["uptime_s"]
            .as_f64()
            .unwrap();
        assert!(now > uptime, "the running pipeline was restarted");
        daemon.terminate()
    };
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("broken.yaml: model: model 'nosuchmodel' is not defined"),
        "{log}"
    );
    assert!(
        log.contains("broken.yaml: sinks: the pipeline has no sinks"),
        "{log}"
    );
}

#[test]
fn a_model_is_reloaded_only_when_its_definition_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let models = |extra: &str| format!("models:\n{}", model_yaml("depth", "dpt-vit", extra));
    let depth = |name: &str| {
        Pipeline::new(name)
            .source(Source::test(64, 48).fps(10))
            .model("depth")
            .jsonl(&out.join(format!("{name}.jsonl")))
    };
    let file = write_tree(out, &models("batch: { max_size: 2 }"), &[depth("a")]);
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    wait_until("inferred frames", Duration::from_secs(30), || {
        frames_out(&base, "a") > 2
    });

    // A second pipeline on the same model: the model stays loaded, the worker takes it.
    std::fs::write(out.join("pipelines/b.yaml"), depth("b").yaml()).unwrap();
    daemon.signal("HUP");
    let line = daemon.line("configuration applied", Duration::from_secs(30));
    assert!(line.contains("models_unloaded=[]"), "{line}");
    wait_until("b's frames", Duration::from_secs(30), || {
        frames_out(&base, "b") > 2
    });

    // The model's definition changes: it is reloaded, and both its pipelines restart.
    write_tree(
        out,
        &models("batch: { max_size: 4 }"),
        &[depth("a"), depth("b")],
    );
    daemon.signal("HUP");
    let line = daemon.line("configuration applied", Duration::from_secs(60));
    assert!(line.contains("models_unloaded=[\"depth\"]"), "{line}");
    assert!(line.contains("restarted=[\"a\", \"b\"]"), "{line}");
    wait_until("frames after the reload", Duration::from_secs(30), || {
        frames_out(&base, "a") > 2 && frames_out(&base, "b") > 2
    });
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("model loaded").count(), 2, "{log}");
    assert_eq!(log.matches("model unloaded").count(), 1, "{log}");
}

#[test]
fn pipelines_are_put_and_deleted_over_http_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(out.join("token"), format!("{token}\n")).unwrap();
    let file = write_tree(
        out,
        "http: { listen: \"127.0.0.1:0\", token_file: token, writes: { dirs: [.] } }\n",
        &[live("one", out)],
    );
    // write_tree's base already sets http; the later key would be a duplicate: rewrite it.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("http: { listen: \"127.0.0.1:0\" }\n", "");
    std::fs::write(&file, text).unwrap();
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    let url = format!("{base}/api/pipelines/two");
    let body = live("two", out).yaml();
    let on_disk = out.join("pipelines/two.yaml");

    // Without a token, or with a wrong one: 401, and nothing written.
    assert_eq!(call("PUT", &url, None, Some(&body)).0, 401);
    assert_eq!(
        call("PUT", &url, Some("wrong-token-wrong-token"), Some(&body)).0,
        401
    );
    assert_eq!(
        call("DELETE", &format!("{base}/api/pipelines/one"), None, None).0,
        401
    );
    assert!(!on_disk.exists());

    // An invalid body: 400 with every error, and nothing written.
    let invalid = "source: { test: { width: 0 } }\nmodel: nosuch\nqueue: { capacity: 0 }\n";
    let (status, answer) = call("PUT", &url, Some(token), Some(invalid));
    assert_eq!(status, 400, "{answer}");
    let errors: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    for expected in [
        "two.yaml: model: model 'nosuch' is not defined",
        "two.yaml: source.test.width: must be positive",
        "two.yaml: queue.capacity: must be at least 1",
        "two.yaml: sinks: the pipeline has no sinks",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:?}"
        );
    }
    assert!(!on_disk.exists());
    // A body naming another pipeline than the URL: 400.
    let (status, answer) = call("PUT", &url, Some(token), Some(&live("three", out).yaml()));
    assert_eq!(status, 400, "{answer}");

    // Created: 201, the file is there, and the pipeline runs.
    let (status, answer) = call("PUT", &url, Some(token), Some(&body));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["applied"]["added"], serde_json::json!(["two"]));
    let written = std::fs::read_to_string(&on_disk).unwrap();
    assert!(written.contains("name: two"), "{written}");
    wait_until("two plays", Duration::from_secs(20), || {
        frames_out(&base, "two") > 2
    });
    // Replaced, as JSON without a name (the URL's is used): 200, the file follows.
    let json = r#"{"source": {"test": {"width": 32, "height": 24, "fps": 15}}, "model": "none",
        "metadata": [{"jsonl": {"stdout": true}}]}"#;
    let (status, answer) = call("PUT", &url, Some(token), Some(json));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"]["changed"], serde_json::json!(["two"]));
    let written = std::fs::read_to_string(&on_disk).unwrap();
    assert!(
        written.contains("width: 32") && written.contains("name: two"),
        "{written}"
    );
    // Read back one pipeline.
    let (status, one) = call("GET", &url, None, None);
    assert_eq!((status, one["name"].as_str()), (200, Some("two")));

    // Deleted: 200, the file is gone, the pipeline too; deleting again is 404.
    let (status, answer) = call("DELETE", &url, Some(token), None);
    assert_eq!(status, 200, "{answer}");
    assert!(!on_disk.exists());
    assert_eq!(names(&base), ["one"]);
    assert_eq!(call("DELETE", &url, Some(token), None).0, 404);
    // A name that could leave the pipelines directory is refused.
    let (status, _) = call(
        "PUT",
        &format!("{base}/api/pipelines/..%2Fescape"),
        Some(token),
        Some(&body),
    );
    assert!(status == 400 || status == 404, "{status}");
    assert!(!out.join("escape.yaml").exists());
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(token), "the token reached the log");
}

#[test]
fn without_a_token_file_the_write_endpoints_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let file = write_tree(out, "", &[live("one", out)]);
    let mut daemon = Daemon::spawn(&file, &[]);
    let base = format!("http://{}", address(&mut daemon));
    let (status, answer) = call(
        "PUT",
        &format!("{base}/api/pipelines/two"),
        Some("x"),
        Some("{}"),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("http.token_file")
    );
    assert_eq!(
        call("DELETE", &format!("{base}/api/pipelines/one"), None, None).0,
        403
    );
    assert!(out.join("pipelines/one.yaml").exists());
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}
