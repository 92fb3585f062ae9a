//! A sink's spool: the bounded buffer between the frame path and a broker connection.
//!
//! The frame path only pushes, without waiting or locking: when the spool is full the oldest
//! message makes room for the newest (a live camera's latest result matters most) and is
//! counted as dropped. The connection's task takes messages off the other end while its
//! broker is there; while it is away they wait here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

pub struct Spool<T> {
    queue: ArrayQueue<T>,
    /// Messages pushed out by newer ones while the spool was full.
    overflowed: AtomicU64,
    /// Wakes the connection's task that sends what is spooled.
    wake: Arc<Notify>,
}

impl<T> Spool<T> {
    /// A spool of `capacity` messages (at least 1) whose pushes wake `wake`.
    pub fn new(capacity: usize, wake: Arc<Notify>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            overflowed: AtomicU64::new(0),
            wake,
        }
    }

    /// Adds `message`; when full, the oldest is dropped and counted. Never blocks.
    pub fn push(&self, message: T) {
        if self.queue.force_push(message).is_some() {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// The oldest message, if any.
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Messages dropped because the spool was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Empties the spool, returning how many messages were in it.
    pub fn discard(&self) -> u64 {
        let mut count = 0;
        while self.queue.pop().is_some() {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spool_drops_its_oldest_and_counts_it() {
        let spool = Spool::new(3, Arc::new(Notify::new()));
        for n in 0..5 {
            spool.push(n);
        }
        assert_eq!(spool.overflowed(), 2);
        assert_eq!(spool.len(), 3);
        assert_eq!(
            std::iter::from_fn(|| spool.pop()).collect::<Vec<_>>(),
            [2, 3, 4]
        );
    }
}
