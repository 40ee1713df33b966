//! [`Timed`]: a future that adds up the time spent in its `poll`: for a guest's future, the time
//! the guest (and the host calls it makes inline) ran on a thread, not the time it waited.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Wraps `inner`, timing each of its polls.
pub struct Timed<F> {
    inner: F,
    busy: Duration,
}

impl<F> Timed<F> {
    pub fn new(inner: F) -> Self {
        Self { inner, busy: Duration::ZERO }
    }

    /// The time spent polling so far.
    pub fn busy(&self) -> Duration {
        self.busy
    }
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let polled = Pin::new(&mut self.inner).poll(cx);
        self.busy += started.elapsed();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy in `poll`, then waiting: only the busy part counts.
    #[tokio::test]
    async fn counts_the_polls_not_the_waits() {
        let mut spun = false;
        let work = std::future::poll_fn(|cx| {
            if spun {
                return Poll::Ready(());
            }
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            spun = true;
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                waker.wake();
            });
            Poll::Pending
        });
        let started = Instant::now();
        let mut timed = Timed::new(Box::pin(work));
        (&mut timed).await;
        let (busy, total) = (timed.busy(), started.elapsed());
        // The 200 ms wait is outside every poll, however the machine schedules the spin. The
        // waker's clock starts inside the first poll (it is spawned there), so the time from the
        // spawn to that poll's return is in both: allow it (up to 100 ms, on a loaded machine),
        // not the wait (counted, busy would be about 230 ms of 230).
        assert!(
            busy >= Duration::from_millis(30) && busy + Duration::from_millis(100) <= total,
            "{busy:?} of {total:?}"
        );
    }
}
