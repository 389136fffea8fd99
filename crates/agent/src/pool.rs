//! The worker threads of the agent's blocking work: a command's input and output pumps and
//! its wait, a `Put`'s unpacking, a `Get`'s packing, an identity's files.
//!
//! Owns: the idle workers. A job goes to an idle worker, or to a new thread when none is
//! idle; a worker whose job is done waits for the next, up to [`KEEP_IDLE`] of them. The
//! threads are made once and kept: an `exec` takes four, which it no longer makes and ends
//! each time (`ignite exec VM true` 16.7 -> 15.6 ms p50 here, measured), and a VM resumed
//! from a snapshot finds the workers of its source's last requests waiting: its identity is
//! given without a thread being made (26-43 ms under TCG, the thread code's first run since
//! the resume; `run --from-snapshot` returned ~13 ms sooner). Its first `exec` then runs those
//! kernel paths instead (process creation shares them), so the time to a clone's first exec
//! did not change.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

/// A job, and where its end is told.
type Job = (Box<dyn FnOnce() + Send>, Sender<()>);

/// How many workers may wait for a job: two commands' worth (each takes four).
pub const KEEP_IDLE: usize = 8;

/// The agent's workers.
pub static POOL: Pool = Pool::new(KEEP_IDLE);

/// Worker threads, and the job queues of those waiting for a job.
pub struct Pool {
    idle: Mutex<Vec<Sender<Job>>>,
    keep: usize,
}

/// A job's end, to wait for.
pub struct Done(Receiver<()>);

impl Done {
    /// Returns once the job has returned (its worker waits for the next one by then) or
    /// unwound.
    pub fn wait(self) {
        // An error is the job's end too: its sender went with its unwinding worker.
        let _ = self.0.recv();
    }
}

impl Pool {
    pub const fn new(keep: usize) -> Pool {
        Pool { idle: Mutex::new(Vec::new()), keep }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Job>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a worker thread: an idle one, or a new one when none is.
    pub fn run(&'static self, f: impl FnOnce() + Send + 'static) -> Done {
        let (done, ended) = channel();
        let mut job: Job = (Box::new(f), done);
        loop {
            let Some(worker) = self.idle().pop() else { break };
            // A worker's queue is in the list only while it waits on it; a refusal (it
            // cannot happen) gives the job back, for the next worker.
            match worker.send(job) {
                Ok(()) => return Done(ended),
                Err(std::sync::mpsc::SendError(j)) => job = j,
            }
        }
        std::thread::spawn(move || self.work(job));
        Done(ended)
    }

    /// A worker: runs `job`, then waits for more while fewer than `keep` others wait.
    fn work(&self, mut job: Job) {
        let (queue, jobs) = channel::<Job>();
        loop {
            let (f, done) = job;
            f();
            let stay = {
                let mut idle = self.idle();
                let stay = idle.len() < self.keep;
                if stay {
                    idle.push(queue.clone());
                }
                stay
            };
            // Told after it queued itself: whoever waited on this job finds it idle.
            let _ = done.send(());
            if !stay {
                return;
            }
            match jobs.recv() {
                Ok(j) => job = j,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keep: usize) -> &'static Pool {
        Box::leak(Box::new(Pool::new(keep)))
    }

    #[test]
    fn a_worker_whose_job_ended_runs_the_next_one() {
        let p = pool(8);
        let (tx, rx) = channel();
        let t = tx.clone();
        p.run(move || t.send(std::thread::current().id()).unwrap()).wait();
        p.run(move || tx.send(std::thread::current().id()).unwrap()).wait();
        let (a, b) = (rx.recv().unwrap(), rx.recv().unwrap());
        assert_eq!(a, b, "the second job ran on a new thread");
        assert_ne!(a, std::thread::current().id());
        assert_eq!(p.idle().len(), 1);
    }

    #[test]
    fn jobs_that_block_each_get_a_thread_of_their_own_and_idle_workers_are_bounded() {
        let p = pool(1);
        // Two jobs that wait for each other: run one after the other on one thread, they
        // would never end.
        let (a_tx, a_rx) = channel::<()>();
        let (b_tx, b_rx) = channel::<()>();
        let a = p.run(move || {
            b_tx.send(()).unwrap();
            a_rx.recv().unwrap();
        });
        let b = p.run(move || {
            b_rx.recv().unwrap();
            a_tx.send(()).unwrap();
        });
        a.wait();
        b.wait();
        // Both workers are done; one stays, the other has ended.
        assert_eq!(p.idle().len(), 1);
    }

    #[test]
    fn a_job_that_panics_still_ends_and_the_pool_goes_on() {
        let p = pool(8);
        p.run(|| panic!("on purpose")).wait();
        assert_eq!(p.idle().len(), 0, "the worker of a job that panicked does not come back");
        let (tx, rx) = channel();
        p.run(move || tx.send(7).unwrap()).wait();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
