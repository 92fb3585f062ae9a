//! Bounded hops between stages, each with a policy for when it is full, and counted drops.
//!
//! A slow stage must cost frames, never memory or latency build-up: every hop is a bounded
//! crossbeam channel, and what happens at the bound is the pipeline's `queue.when_full`. A
//! value that cannot be queued is always counted, whatever the reason: the policy dropped it,
//! the stage after the hop had stopped, or a blocked sender had to give up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

use crate::config::WhenFull;

/// Frames dropped at one hop, readable from any thread (metrics, summaries, jsonl lines).
#[derive(Debug, Default)]
pub struct DropCounter(AtomicU64);

impl DropCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a value was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Queued,
    /// Queued after evicting the oldest queued value (`drop_oldest`).
    QueuedAfterDrop,
    /// Discarded (`drop_newest`).
    Dropped,
    /// Every receiver is gone: the stage after this hop has stopped. The value was dropped
    /// and counted.
    Closed,
    /// A `block` send waited for room until its way out opened (the pipeline's drain was
    /// abandoned): the value was dropped and counted.
    GaveUp,
}

impl SendOutcome {
    /// Whether the value is in the hop.
    pub fn is_queued(&self) -> bool {
        matches!(self, Self::Queued | Self::QueuedAfterDrop)
    }
}

/// When a `block` send that waits for room gives up. Polled while it waits.
pub type GiveUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a blocked send looks at its way out.
const GIVE_UP_POLL: Duration = Duration::from_millis(50);

/// The sending end of a hop. Clone-free on purpose: one producer per hop keeps the order.
pub struct HopSender<T> {
    sender: Sender<T>,
    /// Kept only under `drop_oldest`, to evict the oldest value. (Holding a receiver keeps the
    /// channel open, so the other policies must not, or `block` could wait forever on a
    /// consumer that has gone.)
    evict: Option<Receiver<T>>,
    policy: WhenFull,
    drops: Arc<DropCounter>,
    /// Under `block`, the way out of a wait for room that may never come (a stage after the
    /// hop that is stuck): without one, a send waits as long as the receiver exists.
    give_up: Option<GiveUp>,
    /// Alive while the [`HopReceiver`] is: the eviction receiver kept for `drop_oldest` keeps
    /// the channel itself open, so that is not how a closed hop can be told.
    consumer: std::sync::Weak<()>,
}

/// The receiving end of a hop: a crossbeam receiver (it derefs to one) whose dropping closes
/// the hop for its sender, whatever the policy.
pub struct HopReceiver<T> {
    receiver: Receiver<T>,
    _alive: Arc<()>,
}

impl<T> std::ops::Deref for HopReceiver<T> {
    type Target = Receiver<T>;

    fn deref(&self) -> &Receiver<T> {
        &self.receiver
    }
}

impl<T> HopSender<T> {
    /// A `block` send stops waiting for room, drops its value and counts it, once `give_up`
    /// says so.
    pub fn giving_up_when(mut self, give_up: GiveUp) -> Self {
        self.give_up = Some(give_up);
        self
    }

    pub fn send(&self, value: T) -> SendOutcome {
        match self.policy {
            WhenFull::Block => self.send_blocking(value),
            _ => self.send_now(value).unwrap_or(SendOutcome::Dropped),
        }
    }

    /// Sends without waiting: under `block`, a full hop hands the value back (the caller
    /// keeps it and tries again); the other policies never wait anyway.
    pub fn try_send(&self, value: T) -> Result<SendOutcome, T> {
        self.send_now(value)
    }

    fn send_blocking(&self, mut value: T) -> SendOutcome {
        loop {
            match self.sender.send_timeout(value, GIVE_UP_POLL) {
                Ok(()) => return SendOutcome::Queued,
                Err(SendTimeoutError::Disconnected(_)) => return self.closed(),
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.give_up.as_ref().is_some_and(|give_up| give_up()) {
                        self.drops.add();
                        return SendOutcome::GaveUp;
                    }
                    value = back;
                }
            }
        }
    }

    /// The policy at a full hop, without waiting; `Err` only under `block`.
    fn send_now(&self, value: T) -> Result<SendOutcome, T> {
        if self.consumer.strong_count() == 0 {
            return Ok(self.closed());
        }
        match self.policy {
            WhenFull::Block => match self.sender.try_send(value) {
                Ok(()) => Ok(SendOutcome::Queued),
                Err(TrySendError::Full(back)) => Err(back),
                Err(TrySendError::Disconnected(_)) => Ok(self.closed()),
            },
            WhenFull::DropNewest => Ok(match self.sender.try_send(value) {
                Ok(()) => SendOutcome::Queued,
                Err(TrySendError::Full(_)) => {
                    self.drops.add();
                    SendOutcome::Dropped
                }
                Err(TrySendError::Disconnected(_)) => self.closed(),
            }),
            WhenFull::DropOldest => {
                let mut value = value;
                let mut evicted = false;
                loop {
                    match self.sender.try_send(value) {
                        Ok(()) if evicted => return Ok(SendOutcome::QueuedAfterDrop),
                        Ok(()) => return Ok(SendOutcome::Queued),
                        Err(TrySendError::Disconnected(_)) => return Ok(self.closed()),
                        Err(TrySendError::Full(back)) => {
                            value = back;
                            // The consumer may take the slot first; then nothing is evicted.
                            let oldest = self.evict.as_ref().and_then(|rx| rx.try_recv().ok());
                            if oldest.is_some() {
                                self.drops.add();
                                evicted = true;
                            }
                        }
                    }
                }
            }
        }
    }

    fn closed(&self) -> SendOutcome {
        self.drops.add();
        SendOutcome::Closed
    }

    /// The channel itself, for a `Select` that waits until the hop has room.
    pub fn channel(&self) -> &Sender<T> {
        &self.sender
    }

    pub fn len(&self) -> usize {
        self.sender.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sender.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.sender.capacity().unwrap_or(0)
    }

    pub fn drops(&self) -> &Arc<DropCounter> {
        &self.drops
    }
}

/// A bounded hop with its policy. `capacity` 0 is raised to 1 (a rendezvous channel would
/// make `drop_oldest` meaningless).
pub fn hop<T>(
    capacity: usize,
    policy: WhenFull,
) -> (HopSender<T>, HopReceiver<T>, Arc<DropCounter>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
    let drops = Arc::new(DropCounter::default());
    let alive = Arc::new(());
    (
        HopSender {
            sender,
            evict: (policy == WhenFull::DropOldest).then(|| receiver.clone()),
            policy,
            drops: drops.clone(),
            give_up: None,
            consumer: Arc::downgrade(&alive),
        },
        HopReceiver {
            receiver,
            _alive: alive,
        },
        drops,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_values_and_counts() {
        let (tx, rx, drops) = hop(2, WhenFull::DropOldest);
        for i in 0..5 {
            tx.send(i);
        }
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(drops.get(), 3);
    }

    #[test]
    fn drop_newest_keeps_the_oldest_values_and_counts() {
        let (tx, rx, drops) = hop(2, WhenFull::DropNewest);
        let outcomes: Vec<_> = (0..4).map(|i| tx.send(i)).collect();
        assert_eq!(outcomes[2], SendOutcome::Dropped);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn block_waits_for_room_and_loses_nothing() {
        let (tx, rx, drops) = hop(1, WhenFull::Block);
        let consumer = std::thread::spawn(move || rx.iter().collect::<Vec<_>>());
        for i in 0..100 {
            assert_eq!(tx.send(i), SendOutcome::Queued);
        }
        drop(tx);
        assert_eq!(consumer.join().unwrap(), (0..100).collect::<Vec<_>>());
        assert_eq!(drops.get(), 0);
    }

    #[test]
    fn a_blocking_hop_whose_consumer_left_reports_closed_instead_of_waiting() {
        let (tx, rx, drops) = hop::<u8>(1, WhenFull::Block);
        assert_eq!(tx.send(1), SendOutcome::Queued);
        drop(rx);
        assert_eq!(tx.send(2), SendOutcome::Closed);
        assert_eq!(drops.get(), 1, "a value sent to a closed hop is counted");
    }

    #[test]
    fn every_policy_counts_what_a_closed_hop_refuses() {
        for policy in [WhenFull::Block, WhenFull::DropOldest, WhenFull::DropNewest] {
            let (tx, rx, drops) = hop::<u8>(2, policy);
            drop(rx);
            assert_eq!(tx.send(1), SendOutcome::Closed, "{policy:?}");
            assert_eq!(tx.try_send(2).ok(), Some(SendOutcome::Closed), "{policy:?}");
            assert_eq!(drops.get(), 2, "{policy:?}");
        }
    }

    #[test]
    fn a_blocked_send_gives_up_when_told_and_counts_the_value() {
        let (tx, _rx, drops) = hop::<u8>(1, WhenFull::Block);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tx = tx.giving_up_when({
            let stop = stop.clone();
            Arc::new(move || stop.load(Ordering::Relaxed))
        });
        assert_eq!(tx.send(1), SendOutcome::Queued);
        let sender = std::thread::spawn(move || (tx.send(2), tx));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!sender.is_finished(), "a full block hop waits for room");
        stop.store(true, Ordering::Relaxed);
        let (outcome, _tx) = sender.join().unwrap();
        assert_eq!(outcome, SendOutcome::GaveUp);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn try_send_hands_a_full_block_hop_its_value_back() {
        let (tx, rx, drops) = hop::<u8>(1, WhenFull::Block);
        assert_eq!(tx.try_send(1).ok(), Some(SendOutcome::Queued));
        assert_eq!(tx.try_send(2).err(), Some(2));
        assert_eq!(rx.try_recv().ok(), Some(1));
        assert_eq!(drops.get(), 0, "a value handed back is not dropped");
    }
}
