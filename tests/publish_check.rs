//! `visiond check` on brokers and published sinks: every mistake is found without connecting,
//! all at once, each at its file and key; `--probe` connects (to a real mosquitto) and says
//! whether each broker answered.

mod common;

use std::path::Path;
use std::process::Command;

use common::brokers::Mosquitto;
use common::free_port;

fn check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_visiond"));
    command
        .arg("check")
        .arg("-c")
        .arg(dir.join("visiond.yaml"))
        .args(args)
        .env_remove("MQTT_PASSWORD");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tree(daemon: &str, pipeline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("visiond.yaml"),
        format!("pipelines_dir: pipelines\n{daemon}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pipelines/door.yaml"), pipeline).unwrap();
    dir
}

const DAEMON: &str = "\
brokers:
  site: { mqtt: { url: \"mqtt://127.0.0.1:1\", username: visiond, password_env: MQTT_PASSWORD } }
  bus: { kafka: { bootstrap: \"127.0.0.1:1\" } }
";

#[test]
fn every_broker_and_topic_mistake_is_reported_at_once_without_connecting() {
    let daemon = "\
brokers:
  site: { mqtt: { url: \"http://broker\", password_env: MQTT_PASSWORD, ca_file: ca.pem } }
  tls: { mqtt: { url: \"mqtts://broker:99999\", client_cert: missing.pem } }
  bus: { kafka: { bootstrap: \"kafka-1:9092,:9093\", events_topic: \"visiond/events\" } }
";
    let pipeline = "\
name: door
source: { test: { width: 64, height: 48, frames: 5 } }
model: none
metadata:
  - mqtt: { broker: cloud, topic: \"visiond/{camera}/results\" }
  - mqtt: { broker: bus, qos: 2, topic: \"visiond/+/results\" }
  - kafka: { broker: site, topic: \"results/{pipeline}\", key: \"{pipeline\" }
  - mqtt: { broker: site, every: 0, max_hz: -1, buffer: 0, on_change: true }
";
    let dir = tree(daemon, pipeline);
    let (code, _, stderr) = check(dir.path(), &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = [
        "visiond.yaml: brokers.bus.kafka.bootstrap: ':9093' names no host; expected host:port[,host:port...]",
        "visiond.yaml: brokers.bus.kafka.events_topic: 'visiond/events' holds '/'; a Kafka topic takes only letters, digits, '.', '_' and '-'",
        "visiond.yaml: brokers.site.mqtt.url: 'http://broker' is not an MQTT URL; expected mqtt://host[:port] or mqtts://host[:port] (TLS)",
        "visiond.yaml: brokers.site.mqtt.password_env: a password needs a `username` beside it",
        "visiond.yaml: brokers.tls.mqtt.url: '99999' is not a port between 1 and 65535",
        "visiond.yaml: brokers.tls.mqtt.client_cert: set both `client_cert` and `client_key`, or neither",
        "visiond.yaml: brokers.site.mqtt.password_env: environment variable MQTT_PASSWORD is not set",
        "brokers.site.mqtt.ca_file: ",
        "brokers.tls.mqtt.client_cert: ",
        "pipelines/door.yaml: metadata[0].mqtt.topic: '{camera}' is not a placeholder; placeholders are {pipeline} and {daemon}",
        "pipelines/door.yaml: metadata[0].mqtt.broker: broker 'cloud' is not defined under `brokers` in ",
        "pipelines/door.yaml: metadata[1].mqtt.qos: qos 2 is not offered; use 0 (at most once) or 1 (at least once: kept until the broker acknowledges it)",
        "pipelines/door.yaml: metadata[1].mqtt.topic: 'visiond/+/results' holds an MQTT wildcard ('+' or '#'), which subscribers use; a topic to publish on cannot",
        "pipelines/door.yaml: metadata[1].mqtt.broker: broker 'bus' in ",
        "pipelines/door.yaml: metadata[2].kafka.topic: 'results/{pipeline}' holds '/'",
        "pipelines/door.yaml: metadata[2].kafka.key: '{pipeline' opens a placeholder that is never closed",
        "pipelines/door.yaml: metadata[2].kafka.broker: broker 'site' in ",
        "pipelines/door.yaml: metadata[3].mqtt.every: must be at least 1 (every frame)",
        "pipelines/door.yaml: metadata[3].mqtt.max_hz: must be a positive number of messages per second",
        "pipelines/door.yaml: metadata[3].mqtt.buffer: must be between 1 and 1000000 messages",
        "pipelines/door.yaml: metadata[3].mqtt.on_change: compares the best class of a classification model, and this pipeline has none (model: none)",
    ];
    for line in expected {
        assert!(stderr.contains(line), "missing: {line}\nin:\n{stderr}");
    }
    assert!(stderr.contains("is of kind kafka, not mqtt"), "{stderr}");
    assert!(
        stderr.contains("(mqtt brokers defined: site, tls)"),
        "{stderr}"
    );
}

#[test]
fn a_valid_configuration_is_checked_without_connecting_and_probe_connects() {
    let pipeline = "\
name: door
source: { test: { width: 64, height: 48, frames: 5 } }
model: none
metadata:
  - mqtt: { broker: site, topic: \"visiond/{daemon}/{pipeline}\", qos: 1, every: 2, max_hz: 5 }
";
    // Nothing listens on port 1: check does not notice, because it does not connect.
    let dir = tree(DAEMON, pipeline);
    let (code, stdout, stderr) = check(dir.path(), &[], &[("MQTT_PASSWORD", "x")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");

    // --probe connects: a broker that answers, and one that does not.
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(broker_dir.path(), "");
    let closed = free_port();
    let daemon = format!(
        "brokers:\n  site: {{ mqtt: {{ url: \"mqtt://127.0.0.1:{}\" }} }}\n  away: {{ mqtt: {{ url: \"mqtt://127.0.0.1:{closed}\" }} }}\n",
        broker.port
    );
    let dir = tree(&daemon, pipeline);
    let (code, stdout, stderr) = check(dir.path(), &["--probe"], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("broker site: connected"), "{stdout}");
    assert!(stderr.contains("broker away: cannot connect: "), "{stderr}");
    assert!(
        stderr.contains("1 broker(s) could not be reached"),
        "{stderr}"
    );
}
