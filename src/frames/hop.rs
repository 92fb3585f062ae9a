//! Bounded hops between stages, each with a policy for when it is full, and counted drops.
//!
//! A slow stage must cost frames, never memory or latency build-up: every hop is a bounded
//! crossbeam channel, and what happens at the bound is the pipeline's `queue.when_full`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

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
    /// Every receiver is gone: the stage after this hop has stopped.
    Closed,
}

/// The sending end of a hop. Clone-free on purpose: one producer per hop keeps the order.
pub struct HopSender<T> {
    sender: Sender<T>,
    /// Kept only under `drop_oldest`, to evict the oldest value. (Holding a receiver keeps the
    /// channel open, so the other policies must not, or `block` could wait forever on a
    /// consumer that has gone.)
    evict: Option<Receiver<T>>,
    policy: WhenFull,
    drops: Arc<DropCounter>,
}

impl<T> HopSender<T> {
    pub fn send(&self, value: T) -> SendOutcome {
        match self.policy {
            WhenFull::Block => match self.sender.send(value) {
                Ok(()) => SendOutcome::Queued,
                Err(_) => SendOutcome::Closed,
            },
            WhenFull::DropNewest => match self.sender.try_send(value) {
                Ok(()) => SendOutcome::Queued,
                Err(TrySendError::Full(_)) => {
                    self.drops.add();
                    SendOutcome::Dropped
                }
                Err(TrySendError::Disconnected(_)) => SendOutcome::Closed,
            },
            WhenFull::DropOldest => {
                let mut value = value;
                let mut evicted = false;
                loop {
                    match self.sender.try_send(value) {
                        Ok(()) if evicted => return SendOutcome::QueuedAfterDrop,
                        Ok(()) => return SendOutcome::Queued,
                        Err(TrySendError::Disconnected(_)) => return SendOutcome::Closed,
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
pub fn hop<T>(capacity: usize, policy: WhenFull) -> (HopSender<T>, Receiver<T>, Arc<DropCounter>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
    let drops = Arc::new(DropCounter::default());
    (
        HopSender {
            sender,
            evict: (policy == WhenFull::DropOldest).then(|| receiver.clone()),
            policy,
            drops: drops.clone(),
        },
        receiver,
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
        let (tx, rx, _) = hop::<u8>(1, WhenFull::Block);
        assert_eq!(tx.send(1), SendOutcome::Queued);
        drop(rx);
        assert_eq!(tx.send(2), SendOutcome::Closed);
    }
}
