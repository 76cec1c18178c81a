//! The data plane's threads: one single-threaded tokio runtime per worker, each driven by a
//! thread of its own, as nginx and Envoy run one event loop per worker.
//!
//! A listener binds one `SO_REUSEPORT` socket per worker (listener.rs) and each worker accepts
//! on its own, so a connection lives its whole life on the thread that accepted it. Nothing is
//! stolen between workers: the kernel's hash spreads connections, and a task's wake-up never
//! crosses to another thread or passes the work-stealing scheduler's shared state. Measured on
//! the keep-alive benchmark with one worker, this cut proxy CPU per request by 7% against
//! tokio's multi-thread runtime with one worker thread (benches/README.md).
//!
//! Control work (health checkers, the tap, mirrors spawned from requests) runs where it is
//! spawned: control operations enter worker 0.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, EnterGuard, Handle};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::error::Error;

/// `make()`'s future, pinned in a box that is allocated before the future is made, so that
/// the compiler writes the future's first state straight into it. `Box::pin(make())` makes the
/// future on the stack and copies all of it (its largest state's size, not the few fields the
/// first state holds) into the box: 2.2 KiB per connection and 1.3 KiB per request.
#[inline(always)]
pub(crate) fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// `count` runtimes, each on its own thread, until dropped.
pub(crate) struct Workers {
    each: Vec<Worker>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("count", &self.each.len()).finish()
    }
}

impl Workers {
    pub(crate) fn start(count: usize) -> Result<Self, Error> {
        let mut workers = Self { each: Vec::with_capacity(count) };
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("pymesh-worker-{i}"))
                .spawn(move || {
                    SPARE_TIMERS.with(|spare| *spare.borrow_mut() = Some(Vec::new()));
                    runtime.block_on(async {
                        // Dropped or sent: either way the worker ends.
                        let _ = stopped.await;
                    });
                    // The spare timers belong to this runtime: gone before it is.
                    SPARE_TIMERS.with(|spare| spare.borrow_mut().take());
                    // Tasks still parked (drained connections' leftovers) are dropped here
                    // without waiting for the blocking pool.
                    runtime.shutdown_background();
                })
                .map_err(|e| Error::internal(format!("cannot start worker thread {i}: {e}")))?;
            // Pushed at once, so a later failure's drop stops the threads already started.
            workers.each.push(Worker { handle, stop: Some(stop), thread: Some(thread) });
        }
        Ok(workers)
    }

    pub(crate) fn count(&self) -> usize {
        self.each.len()
    }

    /// Each worker's runtime, for spreading one listener's sockets over them.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &Handle> + Clone {
        self.each.iter().map(|w| &w.handle)
    }

    /// Enter worker 0, where control operations spawn what they start.
    pub(crate) fn enter(&self) -> EnterGuard<'_> {
        self.each[0].handle.enter()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.each {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.each {
            if let Some(thread) = w.thread.take() {
                // Never join ourselves: an engine dropped on one of its own workers (only
                // possible from a task holding it) lets that thread end on its own.
                if thread.thread().id() != std::thread::current().id() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// Spare timers kept by each worker thread, at most this many.
const MAX_SPARE_TIMERS: usize = 1024;

thread_local! {
    /// The worker thread's spare timers; None on any other thread (a timer belongs to the
    /// runtime it was made on, and other threads' runtimes come and go).
    static SPARE_TIMERS: RefCell<Option<Vec<Pin<Box<Sleep>>>>> = const { RefCell::new(None) };
}

/// A timer for one deadline, reused across requests on a worker thread.
///
/// Why: a tokio `Sleep` made per request costs a runtime handle lookup and two reference
/// counts to make, the timer wheel's lock and an insert at its first poll, and the lock and
/// a removal when dropped — several percent of the proxy's user time on a keep-alive request,
/// whose deadline (15 s by default) never fires. A spare timer still in the wheel is reset to
/// a later deadline with one atomic compare-and-swap (tokio moves it in the wheel only when it
/// comes due), so a worker keeps the timers of finished requests and hands them to the next.
/// A spare that comes due wakes the task that last polled it, which polls once for nothing.
#[derive(Debug)]
pub(crate) struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    pub(crate) fn at(when: Instant) -> Self {
        let spare = SPARE_TIMERS.with(|spare| spare.borrow_mut().as_mut().and_then(Vec::pop));
        Self(Some(match spare {
            Some(mut timer) => {
                timer.as_mut().reset(when);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(when)),
        }))
    }

    /// Whether the timer has fired (it fires only when polled once before its deadline, or
    /// polled after it).
    pub(crate) fn is_elapsed(&self) -> bool {
        self.0.as_ref().is_some_and(|timer| timer.is_elapsed())
    }

    /// Move the deadline.
    pub(crate) fn reset(&mut self, when: Instant) {
        if let Some(timer) = &mut self.0 {
            timer.as_mut().reset(when);
        }
    }

    /// Ready once the deadline has passed.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(timer) => std::future::Future::poll(timer.as_mut(), cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let Some(timer) = self.0.take() else { return };
        let _ = SPARE_TIMERS.try_with(|spare| {
            if let Some(spare) = spare.borrow_mut().as_mut().filter(|s| s.len() < MAX_SPARE_TIMERS) {
                spare.push(timer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Workers;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn each_worker_runs_its_tasks_on_its_own_thread_and_drop_ends_them_all() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.count(), 3);
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, handle) in workers.handles().enumerate() {
            let tx = tx.clone();
            handle.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((i, name)).unwrap();
            });
        }
        let mut seen: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        seen.sort();
        let want: Vec<_> = (0..3).map(|i| (i, Some(format!("pymesh-worker-{i}")))).collect();
        assert_eq!(seen, want);

        // A task parked forever is dropped with its worker, releasing what it holds.
        let held = Arc::new(());
        let in_task = Arc::clone(&held);
        workers.handles().nth(1).unwrap().spawn(async move {
            let _keep = in_task;
            std::future::pending::<()>().await;
        });
        {
            let _on = workers.enter();
            tokio::spawn(async {});
        }
        drop(workers);
        assert_eq!(Arc::strong_count(&held), 1, "the parked task was not dropped");
    }

    /// Resolves when `d` has passed, with the time it took.
    async fn waited(mut d: super::Deadline) -> Duration {
        let start = tokio::time::Instant::now();
        std::future::poll_fn(|cx| d.poll(cx)).await;
        start.elapsed()
    }

    #[test]
    fn a_worker_reuses_deadline_timers_and_each_fires_at_its_own_deadline() {
        use super::{Deadline, SPARE_TIMERS};
        use tokio::time::Instant;

        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.handles().next().unwrap().spawn(async move {
            let spares = || SPARE_TIMERS.with(|s| s.borrow().as_ref().map(Vec::len));
            let before = spares();
            // A timer left in the wheel for 10 s, then reused for an earlier deadline.
            drop(Deadline::at(Instant::now() + Duration::from_secs(10)));
            let pooled = spares();
            let earlier = waited(Deadline::at(Instant::now() + Duration::from_millis(50))).await;
            // Reused again, set 30 ms out and then, before it comes due, 150 ms out: the later
            // deadline holds, not the one it was registered with.
            let mut d = Deadline::at(Instant::now() + Duration::from_millis(30));
            let start = Instant::now();
            if let Some(t) = d.0.as_mut() {
                t.as_mut().reset(start + Duration::from_millis(150));
            }
            std::future::poll_fn(|cx| d.poll(cx)).await;
            let later = start.elapsed();
            drop(d);
            tx.send((before, pooled, spares(), earlier, later)).unwrap();
        });
        let (before, pooled, after, earlier, later) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((before, pooled, after), (Some(0), Some(1), Some(1)), "spares kept on the worker");
        assert!(earlier >= Duration::from_millis(50) && earlier < Duration::from_secs(5), "{earlier:?}");
        assert!(later >= Duration::from_millis(140), "{later:?}");
        // Off the workers nothing is kept.
        let _on = workers.enter();
        drop(Deadline::at(Instant::now()));
        assert_eq!(SPARE_TIMERS.with(|s| s.borrow().as_ref().map(Vec::len)), None);
    }
}
