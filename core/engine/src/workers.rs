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

use std::thread::JoinHandle;

use tokio::runtime::{Builder, EnterGuard, Handle};
use tokio::sync::oneshot;

use crate::error::Error;

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
                    runtime.block_on(async {
                        // Dropped or sent: either way the worker ends.
                        let _ = stopped.await;
                    });
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
}
