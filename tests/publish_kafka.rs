//! Results and events on Kafka, against a real Kafka-API broker (tansu, in memory, started on a
//! free loopback port; scripts/setup builds it once), read back with librdkafka's consumer.

mod common;

use std::time::{Duration, Instant};

use common::brokers::{Tansu, check_schema};
use common::{Daemon, Pipeline, Source, jsonl, write_tree};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Topics are made through the admin API first: brokers do not make them on demand.
fn create_topics(bootstrap: &str, names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, error)| panic!("cannot create {topic}: {error}"));
    }
}

/// Reads `topic` from its start until `done` says enough; (key, JSON value) per record.
fn consume(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "visiond-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while !done(&records) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}; read {records:#?}"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            records.push((key, value));
        }
    }
    records
}

#[test]
fn sixty_results_and_the_pipelines_events_reach_kafka_as_the_jsonl_lines() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path());
    create_topics(&broker.bootstrap(), &["visiond.results", "visiond.events"]);
    let lines = dir.path().join("door.jsonl");
    let pipeline = Pipeline::new("door")
        .source(Source::test(64, 48).frames(60))
        .model("none")
        .jsonl(&lines)
        .metadata("kafka: { broker: bus }");
    let daemon = format!(
        "name: box-1\nbrokers:\n  bus: {{ kafka: {{ bootstrap: \"{}\" }} }}\n",
        broker.bootstrap()
    );
    let file = write_tree(dir.path(), &daemon, &[pipeline]);
    let (code, log) = Daemon::spawn(&file, &[]).signal_and_wait(0);
    assert_eq!(code, Some(0), "{log}\ntansu:\n{}", broker.log());
    assert!(log.contains("published=60"), "{log}");

    let results = consume(
        &broker.bootstrap(),
        "visiond.results",
        Duration::from_secs(30),
        |r| r.len() >= 60,
    );
    let written = jsonl(&lines);
    let values: Vec<Value> = results.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values, written, "the records are the jsonl lines, in order");
    assert!(results.iter().all(|(key, _)| key == "door"));

    let events = consume(
        &broker.bootstrap(),
        "visiond.events",
        Duration::from_secs(30),
        |r| {
            r.iter()
                .any(|(_, v)| v["type"] == "availability" && v["state"] == "offline")
        },
    );
    let kinds: Vec<String> = events
        .iter()
        .map(|(_, v)| {
            format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("availability:online"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"state:starting".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"state:finished".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("availability:offline"),
        "{kinds:?}"
    );
    for (key, event) in &events {
        let owner = event.get("pipeline").unwrap_or(&event["daemon"]);
        assert_eq!(owner, key.as_str());
        check_schema(event);
    }
    for value in &values {
        check_schema(value);
    }
}
