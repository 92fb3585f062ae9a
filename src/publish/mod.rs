//! Results and events leave the box: per-frame results on MQTT and Kafka (the `mqtt` and
//! `kafka` sinks under a pipeline's `metadata:`), and the daemon's availability and its
//! pipelines' states and output failures on every broker of the daemon file that carries
//! events.
//!
//! - [`sink`]: a pipeline's published sink: which frames it takes, and its spool;
//! - [`spool`]: the bounded, lock-free hand-off from the frame path (oldest dropped, counted);
//! - [`outbox`]: what one broker connection sends and reports, shared with the frame path;
//! - [`events`]: the events' messages; [`mqtt`] and [`kafka`]: the connections.
//!
//! The frame path only pushes into spools and never waits: the connections run on a small
//! tokio runtime of their own (network I/O only), one per daemon, started with the first
//! broker.

mod backoff;
pub mod events;
mod kafka;
pub mod link;
mod mqtt;
pub mod outbox;
pub mod sink;
mod spool;
mod tls;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub use events::{EventFeed, OutputEvent, StateEvent};
pub use outbox::Outbox;
pub use sink::{DropReason, Sink, SinkShared};

use crate::config::template::{Template, TemplateValues};
use crate::config::{BrokerConfig, Config, MetadataConfig, MqttAddress};
use outbox::EventRoute;
use sink::SinkTarget;

/// Why a pipeline's published sink cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A defect: the configuration is checked before anything starts.
    #[error("broker '{0}' is not defined")]
    UnknownBroker(String),
    #[error("cannot start the publishers' runtime: {0}")]
    Runtime(String),
}

/// How long a connection's tasks may take to say goodbye at shutdown.
const GOODBYE: Duration = Duration::from_secs(3);

/// One broker connection, as it was started.
struct Connection {
    config: BrokerConfig,
    outbox: Arc<Outbox>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Every broker connection of the daemon, and the runtime they run on.
pub struct Publishing {
    runtime: Option<tokio::runtime::Runtime>,
    daemon: String,
    connections: BTreeMap<String, Connection>,
    /// Every sink made, for the totals logged at shutdown (weak: a removed pipeline's go).
    made: Mutex<Vec<Weak<SinkShared>>>,
}

impl Publishing {
    /// Connects every broker `config` uses (a sink publishes there, or it carries events).
    pub fn start(config: &Config) -> Self {
        let mut publishing = Self {
            runtime: None,
            daemon: daemon_name(config),
            connections: BTreeMap::new(),
            made: Mutex::new(Vec::new()),
        };
        publishing.ensure(config);
        publishing
    }

    /// The daemon's name in topics and events.
    pub fn daemon(&self) -> &str {
        &self.daemon
    }

    /// Connects the brokers `config` uses that are not connected yet (a reload that added
    /// one). A broker whose settings changed keeps its connection until the next restart.
    pub fn ensure(&mut self, config: &Config) {
        for (name, broker) in &config.daemon.brokers {
            if !in_use(config, name, broker) {
                continue;
            }
            if let Some(running) = self.connections.get(name) {
                if running.config != *broker {
                    tracing::warn!(broker = %name, "broker settings changed; they take effect at the next restart");
                }
                continue;
            }
            let connection = self.connect(name, broker);
            self.connections.insert(name.clone(), connection);
        }
    }

    fn connect(&mut self, name: &str, broker: &BrokerConfig) -> Connection {
        let outbox = Arc::new(Outbox::new(
            name,
            broker.kind(),
            address(broker),
            &self.daemon,
            route(broker),
        ));
        let started = self.runtime().and_then(|runtime| match broker {
            BrokerConfig::Mqtt(mqtt) => mqtt::spawn(runtime.handle(), mqtt, outbox.clone()),
            BrokerConfig::Kafka(kafka) => kafka::spawn(runtime.handle(), kafka, outbox.clone()),
        });
        let tasks = match started {
            Ok(tasks) => tasks,
            Err(error) => {
                tracing::error!(broker = %name, %error,
                    "cannot start the broker connection; its sinks' results are buffered, and dropped when full");
                outbox.set_disconnected(error);
                Vec::new()
            }
        };
        Connection {
            config: broker.clone(),
            outbox,
            tasks,
        }
    }

    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, String> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("publish")
                .enable_all()
                .build()
                .map_err(|error| PublishError::Runtime(error.to_string()).to_string())?;
            self.runtime = Some(runtime);
        }
        self.runtime
            .as_ref()
            .ok_or_else(|| "no runtime".to_string())
    }

    /// The published sinks of pipeline `pipeline`, one per item of `items` (`None` for the
    /// `jsonl` ones), each registered with its broker's connection.
    pub fn sinks(
        &self,
        pipeline: &str,
        items: &[MetadataConfig],
    ) -> Result<Vec<Option<Sink>>, PublishError> {
        let values = TemplateValues {
            pipeline,
            daemon: &self.daemon,
        };
        let mut sinks = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let (Some(broker), Some(sampling), Some(buffer)) =
                (item.broker(), item.sampling(), item.buffer())
            else {
                sinks.push(None);
                continue;
            };
            let connection = self
                .connections
                .get(broker)
                .ok_or_else(|| PublishError::UnknownBroker(broker.to_string()))?;
            let shared_broker = items
                .iter()
                .filter(|other| other.kind() == item.kind() && other.broker() == Some(broker))
                .count()
                > 1;
            let name = if shared_broker {
                format!("{}:{broker}[{index}]", item.kind())
            } else {
                format!("{}:{broker}", item.kind())
            };
            let render = |text: &str| {
                Template::parse(text)
                    .map(|t| t.render(values))
                    .unwrap_or_else(|_| text.to_string())
            };
            let target = match item {
                MetadataConfig::Mqtt(mqtt) => SinkTarget {
                    pipeline: pipeline.to_string(),
                    name,
                    kind: "mqtt",
                    topic: render(&mqtt.topic),
                    key: None,
                    qos: mqtt.qos.min(1),
                    retain: mqtt.retain,
                    buffer,
                },
                MetadataConfig::Kafka(kafka) => SinkTarget {
                    pipeline: pipeline.to_string(),
                    name,
                    kind: "kafka",
                    topic: render(&kafka.topic),
                    key: Some(render(&kafka.key)),
                    qos: 1,
                    retain: false,
                    buffer,
                },
                MetadataConfig::Jsonl(_) => unreachable!("jsonl has no broker"),
            };
            let shared = Arc::new(SinkShared::new(target, connection.outbox.link.clone()));
            connection.outbox.register(shared.clone());
            if let Ok(mut made) = self.made.lock() {
                made.retain(|sink| sink.strong_count() > 0);
                made.push(Arc::downgrade(&shared));
            }
            sinks.push(Some(Sink::new(shared, sampling)));
        }
        Ok(sinks)
    }

    /// Where pipelines send their events.
    pub fn events(&self) -> EventFeed {
        EventFeed::new(self.outboxes())
    }

    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.connections
            .values()
            .map(|c| c.outbox.clone())
            .collect()
    }

    /// At shutdown, once every pipeline has stopped: waits (at most `grace`) for connected
    /// brokers to take what is spooled, says `offline`, and disconnects. What is left is
    /// counted as dropped at shutdown.
    pub fn close(mut self, grace: Duration) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        // A broker that is away is not waited for: nothing would come of it.
        while Instant::now() < deadline
            && self
                .connections
                .values()
                .any(|c| c.outbox.is_connected() && !c.outbox.is_idle())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut tasks = Vec::new();
        for connection in self.connections.values_mut() {
            connection.outbox.stop();
            tasks.append(&mut connection.tasks);
        }
        runtime.block_on(async {
            let _ = tokio::time::timeout(GOODBYE, async {
                for task in tasks {
                    let _ = task.await;
                }
            })
            .await;
        });
        for connection in self.connections.values() {
            connection.outbox.abandon_spooled();
        }
        runtime.shutdown_timeout(Duration::from_millis(200));
        self.log_totals();
    }

    /// One line per sink: what it published and what it dropped, by reason (every result is
    /// one or the other).
    fn log_totals(&self) {
        let made = self.made.lock().map(|m| m.clone()).unwrap_or_default();
        for sink in made.iter().filter_map(Weak::upgrade) {
            tracing::info!(
                pipeline = %sink.pipeline,
                sink = %sink.name,
                published = sink.published(),
                dropped_buffer_full = sink.dropped_for(DropReason::BufferFull),
                dropped_rejected = sink.dropped_for(DropReason::Rejected),
                dropped_shutdown = sink.dropped_for(DropReason::Shutdown),
                "published sink totals"
            );
        }
    }
}

/// Whether the daemon connects to `broker`: some pipeline publishes there, or it carries
/// events.
fn in_use(config: &Config, name: &str, broker: &BrokerConfig) -> bool {
    broker.carries_events()
        || config.pipelines.iter().any(|p| {
            p.config
                .metadata
                .iter()
                .any(|item| item.broker() == Some(name))
        })
}

fn route(broker: &BrokerConfig) -> Option<EventRoute> {
    match broker {
        BrokerConfig::Mqtt(mqtt) if mqtt.events => Some(EventRoute::Mqtt {
            prefix: mqtt.topic_prefix.clone(),
        }),
        BrokerConfig::Kafka(kafka) if kafka.events => Some(EventRoute::Kafka {
            topic: kafka.events_topic.clone(),
        }),
        _ => None,
    }
}

/// Where `broker` connects, for messages (no credentials: they are never in the URL).
fn address(broker: &BrokerConfig) -> String {
    match broker {
        BrokerConfig::Mqtt(mqtt) => mqtt.url.clone(),
        BrokerConfig::Kafka(kafka) => kafka.bootstrap.clone(),
    }
}

/// The daemon's name: `name` in the daemon file, else this machine's host name (in the
/// characters topics take), else `visiond`.
pub fn daemon_name(config: &Config) -> String {
    if let Some(name) = &config.daemon.name {
        return name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if host.is_empty() {
        "visiond".into()
    } else {
        host
    }
}

/// Connects to every broker once (`visiond check --probe`): one line per broker, Ok with what
/// it found or Err with why it could not connect.
pub fn probe(config: &Config) -> Vec<(String, Result<String, String>)> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return vec![("runtime".into(), Err(error.to_string()))],
    };
    let daemon = daemon_name(config);
    config
        .daemon
        .brokers
        .iter()
        .map(|(name, broker)| {
            // No event route: a probe leaves no will and no availability behind.
            let outbox = Outbox::new(name, broker.kind(), address(broker), &daemon, None);
            let outcome = match broker {
                BrokerConfig::Mqtt(mqtt) => {
                    let tls = MqttAddress::parse(&mqtt.url).is_ok_and(|a| a.tls);
                    runtime
                        .block_on(async {
                            tokio::time::timeout(
                                Duration::from_secs(10),
                                mqtt::probe(mqtt, &outbox),
                            )
                            .await
                        })
                        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
                        .map(|()| format!("connected{}", if tls { " (TLS)" } else { "" }))
                }
                BrokerConfig::Kafka(kafka) => kafka::probe(kafka, &outbox),
            };
            (name.clone(), outcome)
        })
        .collect()
}

/// The TLS files of every MQTT broker, checked as `visiond check` does (without connecting).
pub fn check_tls_files(broker: &crate::config::MqttBroker) -> Vec<(&'static str, String)> {
    tls::check_files(broker)
}

/// A published sink as `/api/pipelines` shows it.
#[derive(Debug, serde::Serialize)]
pub struct SinkStatus {
    pub sink: String,
    pub kind: &'static str,
    pub broker: String,
    pub topic: String,
    /// `connected`, or `disconnected` (with `error`: why).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Messages waiting in the spool, and its size.
    pub buffered: usize,
    pub buffer: usize,
    pub published: u64,
    /// Dropped by reason: `buffer_full`, `rejected`, `shutdown`.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl SinkStatus {
    pub fn of(sink: &SinkShared) -> Self {
        let connected = sink.link.is_connected();
        Self {
            sink: sink.name.clone(),
            kind: sink.kind,
            broker: sink.link.name.clone(),
            topic: sink.topic.to_string(),
            state: if connected {
                "connected"
            } else {
                "disconnected"
            },
            error: sink.last_error().or_else(|| sink.link.last_error()),
            buffered: sink.spool.len(),
            buffer: sink.spool.capacity(),
            published: sink.published(),
            dropped: DropReason::ALL
                .iter()
                .map(|reason| (reason.label(), sink.dropped_for(*reason)))
                .collect(),
        }
    }
}
