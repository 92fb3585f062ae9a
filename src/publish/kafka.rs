//! One Kafka producer (rdkafka, with the librdkafka it bundles), shared by every sink that
//! publishes to the cluster, carrying the daemon's events on `events_topic`.
//!
//! librdkafka keeps retrying what it was handed for as long as the cluster is away (its
//! message timeout is turned off), so at most `inflight` records are handed to it; the rest
//! wait in the sinks' spools, where a full spool drops its oldest, counted. Each record's
//! delivery report says whether the cluster has it: `published`, or `rejected` with why.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::statistics::Statistics;

use super::events;
use super::outbox::{Outbox, Outgoing};
use super::sink::DropReason;
use crate::config::KafkaBroker;

/// How often librdkafka reports its brokers' states (what `connected` follows).
const STATISTICS_MS: &str = "500";

/// Learns from librdkafka whether any broker of the cluster is up, and logs what it says at
/// debug level (the connection's own lines say what matters, once).
struct Context {
    outbox: Arc<Outbox>,
    up: AtomicBool,
    /// An error was logged since the cluster was last up: librdkafka repeats its errors at
    /// every reconnection attempt, the log says it once.
    warned: AtomicBool,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP");
        let was = self.up.swap(up, Ordering::Relaxed);
        if up && !was {
            self.warned.store(false, Ordering::Relaxed);
            self.outbox.set_connected();
            tracing::info!(broker = %self.outbox.name, address = %self.outbox.address, "connected to the Kafka cluster");
        } else if !up && was {
            self.outbox
                .set_disconnected("no broker of the cluster is reachable".into());
            tracing::warn!(broker = %self.outbox.name, address = %self.outbox.address,
                "lost the Kafka cluster; results wait in the sinks' buffers");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let message = format!("{error}: {reason}");
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(broker = %self.outbox.name, address = %self.outbox.address, error = %message,
                "Kafka client error; retrying (results wait in the sinks' buffers)");
        } else {
            tracing::debug!(broker = %self.outbox.name, error = %message, "Kafka client error");
        }
        if !self.up.load(Ordering::Relaxed) {
            self.outbox.set_disconnected(message);
        }
    }

    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(broker = %self.outbox.name, facility, "librdkafka: {message}");
    }
}

type Producer_ = FutureProducer<Context>;

fn config(broker: &KafkaBroker, outbox: &Outbox) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &broker.properties {
        config.set(key, value);
    }
    let client_id = broker
        .client_id
        .clone()
        .unwrap_or_else(|| format!("visiond-{}", outbox.daemon));
    config
        .set("bootstrap.servers", &broker.bootstrap)
        .set("client.id", client_id)
        .set("message.timeout.ms", "0")
        .set(
            "reconnect.backoff.ms",
            broker.reconnect.initial_ms.to_string(),
        )
        .set(
            "reconnect.backoff.max.ms",
            broker.reconnect.max_ms.to_string(),
        )
        .set("statistics.interval.ms", STATISTICS_MS);
    config
}

/// Creates the producer and starts the connection's task on `runtime`; it ends after
/// [`Outbox::stop`].
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    broker: &KafkaBroker,
    outbox: Arc<Outbox>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let context = Context {
        outbox: outbox.clone(),
        up: AtomicBool::new(false),
        warned: AtomicBool::new(false),
    };
    let producer: Producer_ = config(broker, &outbox)
        .create_with_context(context)
        .map_err(|error| format!("cannot create the Kafka producer: {error}"))?;
    if let Some(online) = events::availability(&outbox, true) {
        outbox.push_event(online, None);
    }
    let window = usize::try_from(broker.inflight.max(1)).unwrap_or(usize::MAX);
    let handle = runtime.clone();
    Ok(vec![runtime.spawn(feed(
        Arc::new(producer),
        outbox,
        window,
        handle,
    ))])
}

/// Hands spooled records to the producer while fewer than `window` are undelivered.
async fn feed(
    producer: Arc<Producer_>,
    outbox: Arc<Outbox>,
    window: usize,
    runtime: tokio::runtime::Handle,
) {
    let undelivered = Arc::new(AtomicUsize::new(0));
    let mut waiting: Option<Outgoing> = None;
    loop {
        if outbox.is_stopping() {
            goodbye(&producer, &outbox, waiting, &undelivered).await;
            return;
        }
        let room = undelivered.load(Ordering::Relaxed) < window;
        let next = if room {
            waiting.take().or_else(|| outbox.next())
        } else {
            None
        };
        let Some(sent) = next else {
            // Also wakes now and then: delivery reports free room without a push.
            let _ = tokio::time::timeout(Duration::from_millis(100), outbox.wake.notified()).await;
            continue;
        };
        match send(&producer, &sent) {
            Ok(delivery) => {
                undelivered.fetch_add(1, Ordering::Relaxed);
                let (outbox, undelivered) = (outbox.clone(), undelivered.clone());
                runtime.spawn(async move {
                    report(delivery.await, &sent, &outbox);
                    undelivered.fetch_sub(1, Ordering::Relaxed);
                    outbox.wake.notify_one();
                });
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                waiting = Some(sent);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => {
                tracing::error!(broker = %outbox.name, topic = %sent.topic(), %error, "Kafka refused a record");
                sent.dropped(&outbox, DropReason::Rejected, Some(error.to_string()));
            }
        }
    }
}

fn send(
    producer: &Producer_,
    sent: &Outgoing,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/json"),
    });
    let mut record = FutureRecord::to(sent.topic())
        .payload(&sent.payload()[..])
        .headers(headers);
    if let Some(key) = sent.key() {
        record = record.key(key);
    }
    producer.send_result(record).map_err(|(error, _)| error)
}

/// Counts what became of one record.
fn report(
    outcome: <rdkafka::producer::DeliveryFuture as std::future::Future>::Output,
    sent: &Outgoing,
    outbox: &Outbox,
) {
    match outcome {
        Ok(Ok(_)) => sent.delivered(outbox),
        Ok(Err((error, _))) => {
            let purged = matches!(
                error,
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                )
            );
            if purged {
                sent.dropped(outbox, DropReason::Shutdown, None);
            } else {
                tracing::error!(broker = %outbox.name, topic = %sent.topic(), %error, "Kafka did not take a record");
                sent.dropped(outbox, DropReason::Rejected, Some(error.to_string()));
            }
        }
        Err(_) => sent.dropped(outbox, DropReason::Shutdown, None),
    }
}

/// At shutdown, once the spools are drained (or the grace period is over): the `offline`
/// event, a last flush, and what is still undelivered purged and counted as dropped.
async fn goodbye(
    producer: &Arc<Producer_>,
    outbox: &Arc<Outbox>,
    waiting: Option<Outgoing>,
    undelivered: &AtomicUsize,
) {
    if let Some(sent) = waiting {
        sent.dropped(outbox, DropReason::Shutdown, None);
    }
    if let Some(offline) = events::availability(outbox, false) {
        let sent = outbox.adopt(offline);
        if let Ok(delivery) = send(producer, &sent) {
            let outcome = tokio::time::timeout(Duration::from_secs(2), delivery).await;
            match outcome {
                Ok(outcome) => report(outcome, &sent, outbox),
                Err(_) => sent.dropped(outbox, DropReason::Shutdown, None),
            }
        } else {
            sent.dropped(outbox, DropReason::Shutdown, None);
        }
    }
    let producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = producer.flush(Duration::from_millis(500));
        producer.purge(PurgeConfig::default().queue().inflight());
        // Delivery reports of the purged records come through the producer's poll.
        let _ = producer.flush(Duration::from_millis(500));
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while undelivered.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asks the cluster for its metadata once (`visiond check --probe`).
pub fn probe(broker: &KafkaBroker, outbox: &Outbox) -> Result<String, String> {
    let producer: rdkafka::producer::BaseProducer = config(broker, outbox)
        .set("statistics.interval.ms", "0")
        .create()
        .map_err(|error| format!("cannot create the Kafka producer: {error}"))?;
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|error| format!("no answer from {}: {error}", broker.bootstrap))?;
    Ok(format!(
        "{} broker(s), {} topic(s)",
        metadata.brokers().len(),
        metadata.topics().len()
    ))
}
