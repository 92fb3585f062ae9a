//! Results and events on MQTT, against a real mosquitto (Debian's) started on a free loopback
//! port, read back with mosquitto's own `mosquitto_sub`: exact delivery at qos 1, a broker
//! that goes away and comes back, a wrong password, TLS with a client certificate, and the
//! last will when the daemon is killed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::brokers::{Mosquitto, Received, Subscriber, certificates, check_schema, password_file};
use common::{Daemon, Pipeline, Source, jsonl, wait_until, write_tree};
use serde_json::Value;

/// The daemon file's `brokers:` (and a fixed daemon name, so topics are known).
fn brokers(mqtt: &str) -> String {
    format!("name: box-1\nbrokers:\n  site:\n    mqtt: {mqtt}\n")
}

fn results(received: &[Received], pipeline: &str) -> Vec<Value> {
    let topic = format!("visiond/{pipeline}/results");
    received
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect()
}

fn states(received: &[Received], pipeline: &str) -> Vec<Value> {
    let topic = format!("visiond/{pipeline}/state");
    received
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect()
}

/// The control plane's address, from the daemon's log.
fn http(daemon: &mut Daemon) -> String {
    daemon.field_read_or_next(
        "control plane listening",
        "address",
        Duration::from_secs(30),
    )
}

fn get(address: &str, path: &str) -> String {
    ureq::get(&format!("http://{address}{path}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

/// The value of one sample of /metrics.
fn metric(address: &str, sample: &str) -> Option<f64> {
    get(address, "/metrics")
        .lines()
        .find(|line| line.starts_with(sample))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A number field of the `published sink totals` line.
fn total(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .find(|line| line.contains("published sink totals"))
        .unwrap_or_else(|| panic!("no totals line in:\n{log}"));
    line.split(&format!("{field}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

#[test]
fn sixty_frames_at_qos_1_arrive_once_each_as_the_jsonl_lines_with_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), "");
    let mut subscriber = Subscriber::start(&broker, "visiond/#", &[]);
    let lines = dir.path().join("door.jsonl");
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).frames(60))
        .model("none")
        .jsonl(&lines)
        .metadata("mqtt: { broker: site, qos: 1 }");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let file = write_tree(
        dir.path(),
        &brokers(&format!("{{ url: \"{url}\" }}")),
        &[pipeline],
    );
    let daemon = Daemon::spawn(&file, &[]);
    let (code, log) = daemon.signal_and_wait(0);
    assert_eq!(code, Some(0), "{log}");

    subscriber.until("60 results and the offline", Duration::from_secs(20), |r| {
        results(r, "door").len() >= 60
            && r.iter()
                .any(|m| m.topic == "visiond/box-1/availability" && m.payload == "offline")
    });
    // Anything sent twice would have come by now.
    std::thread::sleep(Duration::from_millis(500));
    subscriber.until("nothing more", Duration::from_secs(1), |_| true);
    let published = results(&subscriber.received, "door");
    let written = jsonl(&lines);
    assert_eq!(written.len(), 60);
    assert_eq!(
        published, written,
        "the MQTT messages are the jsonl lines, once each, in order"
    );
    assert_eq!(total(&log, "published"), 60, "{log}");

    let seen: Vec<String> = states(&subscriber.received, "door")
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect();
    // (60 test frames are made faster than the supervisor looks: no `playing` in between.)
    assert_eq!(
        seen.first().map(String::as_str),
        Some("starting"),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("finished"),
        "{seen:?}"
    );
    let availability: Vec<&str> = subscriber
        .on("visiond/box-1/availability")
        .iter()
        .map(|m| m.payload.as_str())
        .collect();
    assert_eq!(availability, ["online", "offline"]);
    for message in published
        .iter()
        .chain(&states(&subscriber.received, "door"))
    {
        check_schema(message);
    }

    // Someone who subscribes later is told the last state and that the daemon is away.
    let late = Subscriber::start(&broker, "visiond/#", &[]);
    let mut late = late;
    late.until("the retained state", Duration::from_secs(5), |r| {
        r.iter().any(|m| m.topic == "visiond/door/state")
            && r.iter().any(|m| m.topic == "visiond/box-1/availability")
    });
    let state = late.on("visiond/door/state")[0];
    assert!(state.retained);
    assert_eq!(
        serde_json::from_str::<Value>(&state.payload).unwrap()["state"],
        "finished"
    );
    assert_eq!(late.on("visiond/box-1/availability")[0].payload, "offline");
}

#[test]
fn a_broker_away_for_ten_seconds_costs_no_result_silently_and_publishing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path(), "");
    let mut subscriber = Subscriber::start(&broker, "visiond/door/results", &[]);
    let lines = dir.path().join("door.jsonl");
    // 30 fps for 10 s is 300 results: a buffer of 100 must drop some, and count them.
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).fps(30))
        .model("none")
        .jsonl(&lines)
        .metadata("mqtt: { broker: site, qos: 1, buffer: 100 }");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let file = write_tree(
        dir.path(),
        &brokers(&format!("{{ url: \"{url}\", inflight: 20 }}")),
        &[pipeline],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let address = http(&mut daemon);
    subscriber.until("results flowing", Duration::from_secs(30), |r| {
        r.len() >= 30
    });
    let connected = "visiond_broker_connected{broker=\"site\",kind=\"mqtt\"}";
    assert_eq!(metric(&address, connected), Some(1.0));

    broker.kill();
    drop(subscriber);
    wait_until(
        "the daemon to see the broker gone",
        Duration::from_secs(10),
        || metric(&address, connected) == Some(0.0),
    );
    std::thread::sleep(Duration::from_secs(10));
    let last_before = jsonl(&lines).len();
    broker.restart();
    let restarted = Instant::now();
    wait_until("the daemon to reconnect", Duration::from_secs(15), || {
        metric(&address, connected) == Some(1.0)
    });
    let resumed = restarted.elapsed();
    assert!(
        resumed <= Duration::from_secs(5),
        "reconnected only after {resumed:?}"
    );
    let status: Value = serde_json::from_str(&get(&address, "/api/pipelines")).unwrap();
    let sink = &status[0]["sinks"][0];
    assert_eq!(sink["sink"], "mqtt:site");
    assert!(
        sink["dropped"]["buffer_full"].as_u64().unwrap() > 0,
        "{sink}"
    );

    // Results made after the restart arrive.
    let mut after = Subscriber::start(&broker, "visiond/door/results", &[]);
    after.until("new results", Duration::from_secs(10), |r| {
        results(r, "door")
            .iter()
            .any(|m| m["seq"].as_u64().unwrap() as usize > last_before + 30)
    });

    let (_, log) = daemon.terminate();
    let written = jsonl(&lines).len() as u64;
    let published = total(&log, "published");
    let dropped = total(&log, "dropped_buffer_full")
        + total(&log, "dropped_rejected")
        + total(&log, "dropped_shutdown");
    assert!(total(&log, "dropped_buffer_full") > 0, "{log}");
    assert_eq!(
        published + dropped,
        written,
        "every result is delivered or counted as dropped ({published} + {dropped})"
    );
    assert!(log.contains("lost the MQTT broker"), "{log}");
}

#[test]
fn a_wrong_password_is_said_plainly_and_the_pipeline_and_its_file_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = password_file(dir.path(), "visiond", "right-password-42");
    let broker = Mosquitto::start(
        dir.path(),
        &format!("password_file {}", passwords.display()),
    );
    let lines = dir.path().join("door.jsonl");
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).fps(30))
        .model("none")
        .jsonl(&lines)
        .metadata("mqtt: { broker: site, qos: 1 }");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let file = write_tree(
        dir.path(),
        &brokers(&format!(
            "{{ url: \"{url}\", username: visiond, password_env: MQTT_PASSWORD }}"
        )),
        &[pipeline],
    );
    let secret = "wrong-secret-0451";
    let mut daemon = Daemon::spawn(&file, &[("MQTT_PASSWORD", secret)]);
    // mosquitto answers a wrong password with "not authorized" (MQTT 3.1.1 code 5).
    let refused = "the broker refused the connection: not authorized";
    let line = daemon.line("cannot connect to the MQTT broker", Duration::from_secs(30));
    assert!(line.contains(refused), "{line}");
    assert!(line.contains("broker=site"), "{line}");
    let address = http(&mut daemon);

    let status = || -> Value { serde_json::from_str(&get(&address, "/api/pipelines")).unwrap() };
    wait_until("the pipeline to play", Duration::from_secs(20), || {
        status()[0]["state"] == "playing"
    });
    let status = status();
    let sink = &status[0]["sinks"][0];
    assert_eq!(sink["state"], "disconnected", "{sink}");
    assert!(sink["error"].as_str().unwrap().contains(refused), "{sink}");
    // The jsonl sink beside it keeps writing.
    let before = jsonl(&lines).len();
    wait_until("more jsonl lines", Duration::from_secs(10), || {
        jsonl(&lines).len() > before + 30
    });
    let page = get(&address, "/");
    assert!(page.contains("renderSinks"));

    let (_, log) = daemon.terminate();
    assert!(!log.contains(secret), "the password was logged:\n{log}");
}

#[test]
fn mqtts_with_the_sites_own_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let broker = Mosquitto::start(
        dir.path(),
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ),
    );
    let tls = [
        "--cafile",
        certs.ca.to_str().unwrap(),
        "--cert",
        certs.client_cert.to_str().unwrap(),
        "--key",
        certs.client_key.to_str().unwrap(),
    ];
    let mut subscriber = Subscriber::start(&broker, "visiond/door/results", &tls);
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).frames(20))
        .model("none")
        .metadata("mqtt: { broker: site, qos: 1 }");
    let settings = format!(
        "{{ url: \"mqtts://localhost:{}\", ca_file: {}, client_cert: {}, client_key: {} }}",
        broker.port,
        quoted(&certs.ca),
        quoted(&certs.client_cert),
        quoted(&certs.client_key)
    );
    let file = write_tree(dir.path(), &brokers(&settings), &[pipeline]);
    let (code, log) = Daemon::spawn(&file, &[]).signal_and_wait(0);
    assert_eq!(code, Some(0), "{log}");
    subscriber.until("20 results over TLS", Duration::from_secs(20), |r| {
        results(r, "door").len() >= 20
    });
    assert_eq!(total(&log, "published"), 20, "{log}");
}

#[test]
fn the_last_will_says_offline_when_the_daemon_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), "");
    let mut subscriber = Subscriber::start(&broker, "visiond/#", &[]);
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).fps(10))
        .model("none")
        .metadata("mqtt: { broker: site }");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let file = write_tree(
        dir.path(),
        &brokers(&format!("{{ url: \"{url}\", keep_alive_s: 5 }}")),
        &[pipeline],
    );
    let daemon = Daemon::spawn(&file, &[]);
    subscriber.until("online and playing", Duration::from_secs(30), |r| {
        r.iter().any(|m| m.payload == "online")
            && states(r, "door").iter().any(|s| s["state"] == "playing")
    });
    daemon.kill();
    subscriber.until("the last will", Duration::from_secs(15), |r| {
        r.iter()
            .any(|m| m.topic == "visiond/box-1/availability" && m.payload == "offline")
    });
    assert!(
        broker.log().contains("box-1"),
        "the will came from the daemon's client"
    );
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}
