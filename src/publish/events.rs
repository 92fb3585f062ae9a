//! The daemon's events as brokers get them: each pipeline's state changes, its outputs going
//! down and coming back, and the daemon's availability. Their JSON is documented, with the
//! results', in `docs/schema/visiond-messages.schema.json`.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::outbox::{EventMessage, EventRoute, Outbox};

/// A pipeline's state, as its event says it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateEvent {
    /// `starting`, `playing`, `stalled`, `reconnecting`, `failed` or `finished`.
    pub state: &'static str,
    /// Why, for the states that have one (the source's error, the stall, the failure).
    pub reason: Option<String>,
    /// The reconnect attempt, counting from 1, while reconnecting or stalled.
    pub attempt: Option<u32>,
}

/// An output (the video output, or one recording) went down or came back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvent {
    pub output: String,
    pub up: bool,
    /// Why it is down, in a word or two (`disk full`), and the error itself.
    pub reason: Option<String>,
    pub error: Option<String>,
    pub failures: u32,
}

/// Hands events to every broker that carries them. Cloned into each pipeline; the frame path
/// calls it only when something changes, and it never waits.
#[derive(Clone, Default)]
pub struct EventFeed {
    outboxes: Vec<Arc<Outbox>>,
}

impl EventFeed {
    pub fn new(outboxes: Vec<Arc<Outbox>>) -> Self {
        Self {
            outboxes: outboxes.into_iter().filter(|o| o.route.is_some()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.outboxes.is_empty()
    }

    pub fn state(&self, pipeline: &str, event: &StateEvent) {
        for outbox in &self.outboxes {
            let mut body = base("state", &outbox.daemon, Some(pipeline));
            body.insert("state".into(), event.state.into());
            if let Some(reason) = &event.reason {
                body.insert("reason".into(), reason.as_str().into());
            }
            if let Some(attempt) = event.attempt {
                body.insert("attempt".into(), attempt.into());
            }
            let (topic, retain) = match &outbox.route {
                Some(EventRoute::Mqtt { prefix }) => (format!("{prefix}/{pipeline}/state"), true),
                Some(EventRoute::Kafka { topic }) => (topic.clone(), false),
                None => continue,
            };
            outbox.push_event(message(topic, pipeline, body, retain), Some(pipeline));
        }
    }

    pub fn output(&self, pipeline: &str, event: &OutputEvent) {
        for outbox in &self.outboxes {
            let mut body = base("output", &outbox.daemon, Some(pipeline));
            body.insert("output".into(), event.output.as_str().into());
            body.insert("state".into(), if event.up { "up" } else { "down" }.into());
            body.insert("failures".into(), event.failures.into());
            for (key, value) in [("reason", &event.reason), ("error", &event.error)] {
                if let Some(value) = value {
                    body.insert(key.into(), value.as_str().into());
                }
            }
            let topic = match &outbox.route {
                Some(EventRoute::Mqtt { prefix }) => format!("{prefix}/{pipeline}/events"),
                Some(EventRoute::Kafka { topic }) => topic.clone(),
                None => continue,
            };
            outbox.push_event(message(topic, pipeline, body, false), None);
        }
    }
}

/// The daemon's availability on `outbox`'s route: `online` or `offline`. On MQTT it is the
/// bare word, retained (Home Assistant's `availability_topic` reads it as it is); on Kafka an
/// event like the others.
pub fn availability(outbox: &Outbox, online: bool) -> Option<EventMessage> {
    let word = if online { "online" } else { "offline" };
    match outbox.route.as_ref()? {
        EventRoute::Mqtt { prefix } => Some(EventMessage {
            topic: availability_topic(prefix, &outbox.daemon).into(),
            key: outbox.daemon.as_str().into(),
            payload: Bytes::from_static(word.as_bytes()),
            retain: true,
        }),
        EventRoute::Kafka { topic } => {
            let mut body = base("availability", &outbox.daemon, None);
            body.insert("state".into(), word.into());
            Some(message(topic.clone(), &outbox.daemon, body, false))
        }
    }
}

pub fn availability_topic(prefix: &str, daemon: &str) -> String {
    format!("{prefix}/{daemon}/availability")
}

fn base(kind: &str, daemon: &str, pipeline: Option<&str>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("type".into(), kind.into());
    body.insert("daemon".into(), daemon.into());
    if let Some(pipeline) = pipeline {
        body.insert("pipeline".into(), pipeline.into());
    }
    body.insert(
        "time".into(),
        humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into(),
    );
    body
}

fn message(topic: String, key: &str, body: Map<String, Value>, retain: bool) -> EventMessage {
    EventMessage {
        topic: topic.into(),
        key: key.into(),
        payload: Bytes::from(json!(body).to_string()),
        retain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::outbox::Outgoing;

    fn event(outbox: &Outbox) -> (String, Value) {
        match outbox.next() {
            Some(Outgoing::Event(event)) => (
                event.topic.to_string(),
                serde_json::from_slice(&event.payload).unwrap(),
            ),
            _ => panic!("no event"),
        }
    }

    #[test]
    fn output_and_state_events_go_to_their_topics_as_documented() {
        let mqtt = Arc::new(Outbox::new(
            "site",
            "mqtt",
            "mqtt://x".into(),
            "box-1",
            Some(EventRoute::Mqtt {
                prefix: "visiond".into(),
            }),
        ));
        let kafka = Arc::new(Outbox::new(
            "bus",
            "kafka",
            "x:9092".into(),
            "box-1",
            Some(EventRoute::Kafka {
                topic: "visiond.events".into(),
            }),
        ));
        let feed = EventFeed::new(vec![mqtt.clone(), kafka.clone()]);
        feed.output(
            "door",
            &OutputEvent {
                output: "file /rec/door.mp4".into(),
                up: false,
                reason: Some("disk full".into()),
                error: Some("No space left on device".into()),
                failures: 2,
            },
        );
        feed.state(
            "door",
            &StateEvent {
                state: "reconnecting",
                reason: Some("connection refused".into()),
                attempt: Some(3),
            },
        );
        let (topic, output) = event(&mqtt);
        assert_eq!(topic, "visiond/door/events");
        assert_eq!(output["type"], "output");
        assert_eq!(output["state"], "down");
        assert_eq!(output["reason"], "disk full");
        let (topic, state) = event(&mqtt);
        assert_eq!(topic, "visiond/door/state");
        assert_eq!(state["attempt"], 3);
        let (topic, on_kafka) = event(&kafka);
        assert_eq!(topic, "visiond.events");
        assert_eq!(on_kafka["output"], "file /rec/door.mp4");
        // The JSON Schema in docs/ takes them.
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/schema/visiond-messages.schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let id = schema["$id"].as_str().unwrap().to_string();
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.add_resource(&id, schema).unwrap();
        let index = compiler.compile(&id, &mut schemas).unwrap();
        for message in [&output, &state, &on_kafka] {
            schemas.validate(message, index).unwrap();
        }
    }
}
