//! A runtime of its own for read deadlines and the stall watchdog.
//!
//! The main runtime's workers write fetched bytes into stores; under dirty-page
//! throttling a write can take a worker for a long time, and timers due meanwhile fire
//! late. Deadlines are the promise that a read ends, so they run here, on one thread that
//! does nothing but wait for timers and answer reads with an error. The thread is owned:
//! dropping [`Timers`] stops it and waits for it.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct Timers {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Timers {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Timers> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Pending timers are dropped with their reads' clones; the reads themselves
                // are answered by whoever holds them last (see `reads`).
                runtime.shutdown_background();
            })?;
        Ok(Timers {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
