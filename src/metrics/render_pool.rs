//! Helper threads that render parts of a `/metrics` document in parallel with the HTTP
//! worker that asked for it.
//!
//! Started once, on the first render large enough to split, and blocked on a channel
//! between renders: starting and joining a thread per part costs about 55 µs on the 2-core
//! test machine, a task handed to a parked helper about 1 µs (`cargo bench --bench metrics --
//! render_handoff`). One helper per core beyond
//! the first, at most 7. Must never: run anything but render work, or be waited on by a
//! timing thread or a streaming writer (their threads never call into `/metrics`).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::thread;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

type Task = Box<dyn FnOnce() + Send>;

/// Render helpers, shared by every `/metrics` request.
pub struct RenderPool {
    tasks: Sender<Task>,
    helpers: usize,
}

/// The result of a task given to a helper.
pub struct Pending<T>(Receiver<thread::Result<T>>);

impl<T> Pending<T> {
    /// Waits for the task's result; a panic in the task resumes here.
    pub fn join(self) -> T {
        match self.0.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => resume_unwind(panic),
            // The helper drops the sender only after sending: unreachable.
            Err(_) => panic!("a /metrics render helper went away"),
        }
    }
}

impl RenderPool {
    /// The process's pool: `threads - 1` helpers, `threads` being the cores available (at
    /// most 8), started on first use. No helpers on a single core.
    pub fn global() -> &'static RenderPool {
        static POOL: OnceLock<RenderPool> = OnceLock::new();
        POOL.get_or_init(|| RenderPool::start(render_threads() - 1))
    }

    fn start(helpers: usize) -> Self {
        let (tasks, queue) = unbounded::<Task>();
        let mut started = 0;
        for i in 0..helpers {
            let queue = queue.clone();
            let spawned = thread::Builder::new()
                .name(format!("metrics-render-{i}"))
                .spawn(move || {
                    for task in queue {
                        task();
                    }
                });
            // A helper that cannot be started (resource limits) leaves fewer helpers.
            if spawned.is_ok() {
                started += 1;
            }
        }
        RenderPool {
            tasks,
            helpers: started,
        }
    }

    /// Gives `task` to a helper. With no helper running it runs here, now.
    pub fn spawn<T: Send + 'static>(
        &self,
        task: impl FnOnce() -> T + Send + 'static,
    ) -> Pending<T> {
        let (done, result) = bounded(1);
        let run = move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(task)));
        };
        if self.helpers == 0 {
            run();
        } else if let Err(returned) = self.tasks.send(Box::new(run)) {
            (returned.0)();
        }
        Pending(result)
    }
}

/// Threads a render may use: the cores available (read once — it consults cgroup files), at
/// most 8, since beyond that the cost of splitting outweighs the work.
pub fn render_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_helpers_and_panics_come_back() {
        let pool = RenderPool::start(2);
        assert_eq!(pool.helpers, 2);
        let pending: Vec<_> = (0..10u64)
            .map(|i| {
                pool.spawn(move || {
                    let name = thread::current().name().map(str::to_owned);
                    (i * i, name)
                })
            })
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            let (square, name) = p.join();
            assert_eq!(square, (i * i) as u64);
            assert!(name.unwrap().starts_with("metrics-render-"));
        }
        let failing = pool.spawn(|| -> u8 { panic!("render bug") });
        let caught = catch_unwind(AssertUnwindSafe(|| failing.join())).unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"render bug"));
        // The helper survived its task's panic.
        assert_eq!(pool.spawn(|| 7).join(), 7);
        // Without helpers, a task runs on the caller.
        let none = RenderPool::start(0);
        let here = thread::current().id();
        assert!(none.spawn(move || thread::current().id() == here).join());
    }
}
