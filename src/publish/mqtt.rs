//! One MQTT broker connection (rumqttc, MQTT 3.1.1), shared by every sink that publishes
//! there, carrying the daemon's availability (with `offline` as its last will) and events.
//!
//! rumqttc keeps no queue of its own across a lost connection and does not back off, so both
//! are here: messages wait in their sinks' spools; what was sent and not yet acknowledged is
//! kept (in [`Tracking`]) and sent again, first, after the next connection, so a qos 1
//! message is delivered at least once or counted as dropped, never lost in between.
//!
//! Two tasks share the connection: `drive` polls rumqttc's event loop (it is never cancelled
//! mid-write), `feed` hands it messages while there is room in the window of unacknowledged
//! ones. rumqttc gives each publish its packet id in the order it takes them, so the id of
//! each message is learned from the order of its `Outgoing::Publish` events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};

use super::backoff::Backoff;
use super::events;
use super::outbox::{EventRoute, Outbox, Outgoing};
use super::sink::DropReason;
use crate::config::{MqttAddress, MqttBroker};

/// The largest message (topic, payload and headers) this client sends; a larger one is
/// refused as `rejected` rather than sent, since it would cost the whole connection.
const MAX_PACKET: usize = 256 * 1024;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT_S: u64 = 5;

/// What was handed to rumqttc and is not yet acknowledged, in the order it was taken.
#[derive(Default)]
struct Tracking {
    connected: bool,
    /// Set once the connection is closing for good.
    finished: bool,
    /// Handed to rumqttc; its packet id is not known yet.
    unassigned: VecDeque<(u64, Outgoing)>,
    /// qos 1, written, waiting for the broker's PUBACK.
    awaiting: BTreeMap<u16, (u64, Outgoing)>,
    /// Taken back from a lost connection: sent first after the next one.
    resend: VecDeque<(u64, Outgoing)>,
    taken: u64,
}

impl Tracking {
    fn in_window(&self) -> usize {
        self.unassigned.len() + self.awaiting.len()
    }

    /// Everything sent and not acknowledged goes back to be sent again, oldest first.
    fn take_back(&mut self) {
        let mut back: Vec<(u64, Outgoing)> = self.unassigned.drain(..).collect();
        back.extend(std::mem::take(&mut self.awaiting).into_values());
        back.sort_by_key(|(order, _)| *order);
        for item in back.into_iter().rev() {
            self.resend.push_front(item);
        }
    }
}

type Shared = Arc<Mutex<Tracking>>;

fn lock(tracking: &Shared) -> MutexGuard<'_, Tracking> {
    tracking
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rumqttc options for `broker` (address, identity, credentials, will, TLS).
pub fn options(broker: &MqttBroker, outbox: &Outbox) -> Result<MqttOptions, String> {
    let address = MqttAddress::parse(&broker.url)?;
    let client_id = broker
        .client_id
        .clone()
        .unwrap_or_else(|| format!("visiond-{}", outbox.daemon));
    let mut options = MqttOptions::new(client_id, address.host, address.port);
    options.set_keep_alive(Duration::from_secs(broker.keep_alive_s));
    // A new session each time: what the broker did not acknowledge is resent from here, so a
    // session the broker kept would only send it twice.
    options.set_clean_session(true);
    // Twice the window: packet ids stay free even when acknowledgements come out of order.
    options.set_inflight(broker.inflight.saturating_mul(2));
    options.set_max_packet_size(64 * 1024, MAX_PACKET);
    if let Some(username) = &broker.username {
        let password = match &broker.password_env {
            Some(variable) => std::env::var(variable).map_err(|_| {
                format!("environment variable {variable} (password_env) is not set")
            })?,
            None => String::new(),
        };
        options.set_credentials(username.clone(), password);
    }
    if let Some(EventRoute::Mqtt { prefix }) = &outbox.route {
        options.set_last_will(LastWill::new(
            events::availability_topic(prefix, &outbox.daemon),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    if address.tls {
        let config = super::tls::client_config(broker)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

/// Starts the connection's tasks on `runtime`; they end after [`Outbox::stop`].
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    broker: &MqttBroker,
    outbox: Arc<Outbox>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let options = options(broker, &outbox)?;
    let window = usize::from(broker.inflight.max(1));
    let (client, mut eventloop) = AsyncClient::new(options, window * 2 + 16);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(network);
    let tracking: Shared = Arc::default();
    let backoff = Backoff::new(
        Duration::from_millis(broker.reconnect.initial_ms),
        Duration::from_millis(broker.reconnect.max_ms),
    );
    let drive = runtime.spawn(drive(eventloop, tracking.clone(), outbox.clone(), backoff));
    let feed = runtime.spawn(feed(client, tracking, outbox, window));
    Ok(vec![drive, feed])
}

/// Polls the event loop: connects (and reconnects, with backoff), and learns what the broker
/// received.
async fn drive(
    mut eventloop: EventLoop,
    tracking: Shared,
    outbox: Arc<Outbox>,
    mut backoff: Backoff,
) {
    let mut reported: Option<String> = None;
    loop {
        if lock(&tracking).finished || (outbox.is_stopping() && !outbox.is_connected()) {
            return;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                reported = None;
                connected(&tracking, &outbox);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                let mut tracking = lock(&tracking);
                if let Some((order, sent)) = tracking.unassigned.pop_front() {
                    if sent.qos() == 0 {
                        sent.delivered(&outbox);
                        outbox.wake.notify_one();
                    } else {
                        tracking.awaiting.insert(pkid, (order, sent));
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some((_, sent)) = lock(&tracking).awaiting.remove(&ack.pkid) {
                    sent.delivered(&outbox);
                    outbox.wake.notify_one();
                }
            }
            Ok(_) => {}
            Err(error) => {
                let was_connected = outbox.is_connected();
                {
                    let mut tracking = lock(&tracking);
                    tracking.connected = false;
                    tracking.take_back();
                    // A publish handed over after the event loop emptied its channel would
                    // otherwise go out in the next session too: empty it again, under the
                    // lock the feeder sends under, and forget rumqttc's own copies.
                    eventloop.clean();
                    eventloop.pending.clear();
                    if tracking.finished {
                        return;
                    }
                }
                let message = describe(&error);
                outbox.set_disconnected(message.clone());
                let delay = backoff.fail();
                report_down(&outbox, &message, was_connected, delay, &mut reported);
                wait_unless_stopping(&outbox, delay).await;
            }
        }
    }
}

/// The broker accepted the connection: the daemon's availability and every pipeline's state
/// go out first, then what waited.
fn connected(tracking: &Shared, outbox: &Outbox) {
    outbox.set_connected();
    tracing::info!(broker = %outbox.name, address = %outbox.address, "connected to the MQTT broker");
    let mut greeting: Vec<Outgoing> = Vec::new();
    if let Some(online) = events::availability(outbox, true) {
        greeting.push(outbox.adopt(online));
    }
    // After a reconnection each pipeline's state is sent again (a broker that restarted
    // without persistence lost the retained ones); on the first, every state change since
    // the start still waits in the events' spool.
    if outbox.connects() > 1 {
        greeting.extend(outbox.states().into_iter().map(|state| outbox.adopt(state)));
    }
    let mut tracking = lock(tracking);
    for sent in greeting.into_iter().rev() {
        tracking.resend.push_front((0, sent));
    }
    tracking.connected = true;
    drop(tracking);
    outbox.wake.notify_one();
}

/// Logs a connection that went down or could not be made: once per distinct reason, so a
/// broker away for hours writes a line when it goes and when it comes back, not one per try.
fn report_down(
    outbox: &Outbox,
    message: &str,
    was_connected: bool,
    delay: Duration,
    reported: &mut Option<String>,
) {
    let retry_in_ms = delay.as_millis() as u64;
    if was_connected {
        tracing::warn!(broker = %outbox.name, address = %outbox.address, error = %message, retry_in_ms,
            "lost the MQTT broker; results wait in the sinks' buffers");
    } else if reported.as_deref() != Some(message) {
        tracing::error!(broker = %outbox.name, address = %outbox.address, error = %message, retry_in_ms,
            "cannot connect to the MQTT broker; retrying (results wait in the sinks' buffers)");
    } else {
        tracing::debug!(broker = %outbox.name, error = %message, retry_in_ms, "still cannot connect");
    }
    *reported = Some(message.to_string());
}

/// Hands spooled messages to rumqttc while connected and the window has room.
async fn feed(client: AsyncClient, tracking: Shared, outbox: Arc<Outbox>, window: usize) {
    loop {
        if outbox.is_stopping() {
            goodbye(&client, &tracking, &outbox).await;
            return;
        }
        if !send_one(&client, &tracking, &outbox, window) {
            outbox.wake.notified().await;
        }
    }
}

/// Sends the next message if it may; false when there is nothing to do until woken.
fn send_one(client: &AsyncClient, tracking: &Shared, outbox: &Outbox, window: usize) -> bool {
    let mut tracking = lock(tracking);
    if !tracking.connected || tracking.in_window() >= window {
        return false;
    }
    let next = match tracking.resend.pop_front() {
        Some(item) => item,
        None => match outbox.next() {
            Some(sent) => {
                tracking.taken += 1;
                (tracking.taken, sent)
            }
            None => return false,
        },
    };
    let (order, sent) = next;
    let size = sent.topic().len() + sent.payload().len() + 16;
    if size > MAX_PACKET {
        sent.dropped(
            outbox,
            DropReason::Rejected,
            Some(format!(
                "a message of {size} bytes is more than the {MAX_PACKET} an MQTT message may carry here"
            )),
        );
        return true;
    }
    let qos = if sent.qos() == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    // Under the lock: the event loop's side takes everything back under it too, so nothing
    // handed over can slip between the two.
    match client.try_publish(sent.topic(), qos, sent.retain(), sent.payload().to_vec()) {
        Ok(()) => {
            tracking.unassigned.push_back((order, sent));
            true
        }
        Err(_) => {
            tracking.resend.push_front((order, sent));
            false
        }
    }
}

/// At shutdown, once the spools are drained (or the grace period is over): `offline` is
/// published (a clean disconnect does not send the will), then the connection is closed.
/// What is still unacknowledged is counted as dropped at shutdown.
async fn goodbye(client: &AsyncClient, tracking: &Shared, outbox: &Outbox) {
    let connected = lock(tracking).connected;
    if connected && let Some(offline) = events::availability(outbox, false) {
        let offline = outbox.adopt(offline);
        lock(tracking).resend.push_back((u64::MAX, offline));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            send_one(client, tracking, outbox, usize::MAX);
            if is_settled(tracking) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut guard = lock(tracking);
    guard.finished = true;
    guard.take_back();
    for (_, sent) in guard.resend.drain(..) {
        sent.dropped(outbox, DropReason::Shutdown, None);
    }
    drop(guard);
    let _ = client.try_disconnect();
}

/// Nothing waits to be sent or acknowledged.
fn is_settled(tracking: &Shared) -> bool {
    let tracking = lock(tracking);
    tracking.resend.is_empty() && tracking.in_window() == 0
}

async fn wait_unless_stopping(outbox: &Outbox, delay: Duration) {
    let deadline = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < deadline && !outbox.is_stopping() {
        tokio::time::sleep(Duration::from_millis(50).min(delay)).await;
    }
}

/// A connection error in words a person can act on.
pub fn describe(error: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as Code;
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                Code::BadUserNamePassword => "bad user name or password",
                // What mosquitto answers a wrong password with, too.
                Code::NotAuthorized => {
                    "not authorized (check username and password_env, and the broker's access rules)"
                }
                Code::BadClientId => "client identifier rejected",
                Code::RefusedProtocolVersion => "MQTT 3.1.1 not accepted",
                Code::ServiceUnavailable => "service unavailable",
                Code::Success => "no reason given",
            };
            format!("the broker refused the connection: {why}")
        }
        ConnectionError::NetworkTimeout => {
            format!("no answer within {CONNECT_TIMEOUT_S} s")
        }
        ConnectionError::Io(error) => error.to_string(),
        ConnectionError::Tls(error) => format!("TLS: {error}"),
        other => other.to_string(),
    }
}

/// Connects once and disconnects (`visiond check --probe`): Ok with nothing to say, or why
/// not.
pub async fn probe(broker: &MqttBroker, outbox: &Outbox) -> Result<(), String> {
    // `outbox` has no event route: no will, so the probe leaves no `offline` behind; and its
    // own client id, so it does not throw a running daemon off the broker.
    let mut options = options(broker, outbox)?;
    let client_id = format!("{}-probe", options.client_id());
    options.set_client_id(client_id);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(network);
    let outcome = match eventloop.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(()),
        Ok(other) => Err(format!("unexpected first answer: {other:?}")),
        Err(error) => Err(describe(&error)),
    };
    if outcome.is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    outcome
}
