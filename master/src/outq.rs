//! A connection's outgoing queue, within one shard (one thread).
//!
//! Senders never wait: [`OutQueue::try_send`] fails at the bound, and the
//! caller decides what that means (the shell closes the connection). The
//! connection's writer takes everything queued at once
//! ([`OutQueue::recv_many`]) and writes it with one system call, so a busy
//! connection costs one send per batch rather than one per message.
//!
//! Memory follows what is queued, not the bound: the buffer grows as items
//! arrive and is given back once drained.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Capacity kept by an empty queue; more is returned to the allocator.
const KEEP: usize = 16;

pub struct OutQueue<T> {
    inner: RefCell<Inner<T>>,
}

struct Inner<T> {
    items: VecDeque<T>,
    max: usize,
    waker: Option<Waker>,
    closed: bool,
}

impl<T> OutQueue<T> {
    /// A queue that holds at most `max` items.
    pub fn new(max: usize) -> OutQueue<T> {
        OutQueue { inner: RefCell::new(Inner { items: VecDeque::new(), max, waker: None, closed: false }) }
    }

    /// Queues `item`, unless `max` items are queued or the queue is closed;
    /// then the item comes back.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        let mut i = self.inner.borrow_mut();
        if i.closed || i.items.len() >= i.max {
            return Err(item);
        }
        i.items.push_back(item);
        let waker = i.waker.take();
        drop(i);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.inner.borrow().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writer is gone: later sends fail, and what is queued is dropped.
    pub fn close(&self) {
        let mut i = self.inner.borrow_mut();
        i.closed = true;
        i.items = VecDeque::new();
    }

    /// Waits until something is queued, then moves up to `limit` items
    /// (at least one) to the end of `out`, oldest first. Returns `false`,
    /// moving nothing, once the queue is closed.
    pub async fn recv_many(&self, out: &mut Vec<T>, limit: usize) -> bool {
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if i.closed {
                return Poll::Ready(false);
            }
            if i.items.is_empty() {
                i.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = i.items.len().min(limit.max(1));
            out.extend(i.items.drain(..n));
            if i.items.is_empty() && i.items.capacity() > KEEP {
                i.items.shrink_to(KEEP);
            }
            Poll::Ready(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = pin!(f);
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn drains_in_order_up_to_the_limit() {
        let q = OutQueue::new(10);
        for i in 0..5 {
            q.try_send(i).unwrap();
        }
        let mut out = vec![];
        assert_eq!(poll_once(q.recv_many(&mut out, 3)), Poll::Ready(true));
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(poll_once(q.recv_many(&mut out, 100)), Poll::Ready(true));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(poll_once(q.recv_many(&mut out, 100)), Poll::Pending);
    }

    #[test]
    fn refuses_at_the_bound_and_after_close() {
        let q = OutQueue::new(2);
        q.try_send(1).unwrap();
        q.try_send(2).unwrap();
        assert_eq!(q.try_send(3), Err(3));
        assert_eq!(q.len(), 2);
        q.close();
        assert_eq!(q.try_send(4), Err(4));
        let mut out = vec![];
        assert_eq!(poll_once(q.recv_many(&mut out, 10)), Poll::Ready(false));
        assert!(out.is_empty());
    }

    #[test]
    fn a_send_wakes_the_waiting_writer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let q = OutQueue::new(4);
        let mut out = vec![];
        {
            let mut f = pin!(q.recv_many(&mut out, 4));
            assert!(f.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            q.try_send(7).unwrap();
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(f.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(true));
        }
        assert_eq!(out, [7]);
    }

    #[test]
    fn gives_memory_back_once_drained() {
        let q = OutQueue::new(100_000);
        for i in 0..10_000 {
            q.try_send(i).unwrap();
        }
        let mut out = vec![];
        while !q.is_empty() {
            assert_eq!(poll_once(q.recv_many(&mut out, 1_000)), Poll::Ready(true));
        }
        assert_eq!(out.len(), 10_000);
        assert!(q.inner.borrow().items.capacity() <= KEEP);
    }
}
