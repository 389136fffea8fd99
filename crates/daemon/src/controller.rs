//! ignited's controller, in the shape of kube-runtime's: work is per VM. One action on a VM at
//! a time — the reconciler's and the API's alike take the VM's lock ([`Controller::lock`]); at
//! most `workers` VMs are acted on at once, so one VM's 30 s stop holds up only that VM; and a
//! VM whose reconcile failed is retried after a backoff that doubles with each failure (1 s up
//! to 5 min, [`backoff`]) instead of at every pass, the daemon waking up for it
//! ([`Controller::next_retry`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// VMs acted on at once.
pub const WORKERS: usize = 4;
/// Longest wait before a failed VM is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before the next attempt after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy)]
struct Failing {
    failures: u32,
    retry_at: Instant,
}

/// What became of one item of a run.
#[derive(Debug, PartialEq, Eq)]
pub enum Ran<R> {
    Done(R),
    /// Not attempted: its VM failed `failures` times in a row and is retried in `in`.
    Deferred {
        failures: u32,
        retry_in: Duration,
    },
}

/// Per-VM queue, locks and backoff.
#[derive(Debug)]
pub struct Controller {
    workers: usize,
    failing: Mutex<HashMap<String, Failing>>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    pub fn new(workers: usize) -> Controller {
        Controller { workers: workers.max(1), failing: Mutex::default(), locks: Mutex::default() }
    }

    /// The lock every actor on VM `key` (its UID) holds while it acts.
    pub fn lock(&self, key: &str) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(key.to_string()).or_default().clone()
    }

    /// When the earliest failed VM is due again.
    pub fn next_retry(&self) -> Option<Instant> {
        lock(&self.failing).values().map(|f| f.retry_at).min()
    }

    /// Forgets the backoff of VMs not in `keys` (gone from the manifests).
    pub fn retain(&self, keys: &std::collections::HashSet<String>) {
        lock(&self.failing).retain(|k, _| keys.contains(k));
    }

    /// Runs `work` once for each item — at most `workers` at a time, each under its VM's lock —
    /// except for VMs still in backoff at `now` (the pass's time; a failure's backoff counts
    /// from it). `work` says whether it failed. Results come back in the order of `items`.
    pub fn run<T: Send, R: Send>(
        &self,
        now: Instant,
        items: Vec<(String, T)>,
        work: impl Fn(&str, T) -> (R, bool) + Sync,
    ) -> Vec<(String, Ran<R>)> {
        let n = items.len();
        let mut results: Vec<Option<(String, Ran<R>)>> = (0..n).map(|_| None).collect();
        let mut queue = VecDeque::new();
        {
            let failing = lock(&self.failing);
            for (i, (key, item)) in items.into_iter().enumerate() {
                match failing.get(&key) {
                    Some(f) if f.retry_at > now => {
                        let retry_in = f.retry_at - now;
                        results[i] = Some((key, Ran::Deferred { failures: f.failures, retry_in }));
                    }
                    _ => queue.push_back((i, key, item)),
                }
            }
        }
        let queue = Mutex::new(queue);
        let done = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..self.workers.min(lock(&queue).len()) {
                s.spawn(|| loop {
                    let Some((i, key, item)) = lock(&queue).pop_front() else { return };
                    let vm_lock = self.lock(&key);
                    let (r, failed) = {
                        let _held = lock(&vm_lock);
                        work(&key, item)
                    };
                    let mut failing = lock(&self.failing);
                    if failed {
                        let failures = failing.get(&key).map_or(0, |f| f.failures) + 1;
                        // Counted from when the attempt ended (or from the pass's time, if later).
                        let retry_at = now.max(Instant::now()) + backoff(failures);
                        failing.insert(key.clone(), Failing { failures, retry_at });
                    } else {
                        failing.remove(&key);
                    }
                    drop(failing);
                    lock(&done).push((i, key, Ran::Done(r)));
                });
            }
        });
        for (i, key, r) in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
            results[i] = Some((key, r));
        }
        results.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let s: Vec<u64> = (1..=11).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn a_slow_vm_holds_up_only_itself() {
        let c = Controller::new(2);
        let (b_done, b_seen) = mpsc::channel::<()>();
        let b_seen = Mutex::new(b_seen);
        let items = vec![("slow".to_string(), ()), ("fast".to_string(), ())];
        let out = c.run(Instant::now(), items, |key, ()| {
            if key == "fast" {
                b_done.send(()).unwrap();
                return ("fast done", false);
            }
            // The slow VM finishes only once the fast one has: were they serialized behind
            // it, this would time out.
            let seen = lock(&b_seen).recv_timeout(Duration::from_secs(20)).is_ok();
            (if seen { "slow done after fast" } else { "slow timed out" }, false)
        });
        assert_eq!(
            out,
            vec![("slow".to_string(), Ran::Done("slow done after fast")), ("fast".to_string(), Ran::Done("fast done"))]
        );
    }

    #[test]
    fn at_most_workers_vms_at_once() {
        let c = Controller::new(2);
        let (now, max) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items = (0..8).map(|i| (format!("vm{i}"), i)).collect();
        let out = c.run(Instant::now(), items, |_, i| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            std::thread::yield_now();
            now.fetch_sub(1, Ordering::SeqCst);
            (i, false)
        });
        assert!(max.load(Ordering::SeqCst) <= 2, "{max:?}");
        let order: Vec<i32> = out.iter().map(|(_, r)| if let Ran::Done(i) = r { *i } else { -1 }).collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_vm_waits_its_backoff_and_a_success_clears_it() {
        let c = Controller::new(4);
        let t0 = Instant::now();
        let attempts = AtomicUsize::new(0);
        // "a" fails, anything else succeeds.
        let fail = |key: &str, ()| {
            attempts.fetch_add(1, Ordering::SeqCst);
            ((), key == "a")
        };
        c.run(t0, vec![("a".into(), ())], fail);
        // Due again in 1 s: a pass now skips it, and says when it will be tried.
        let out = c.run(Instant::now(), vec![("a".into(), ()), ("b".into(), ())], fail);
        assert!(matches!(out[0].1, Ran::Deferred { failures: 1, .. }), "{out:?}");
        assert_eq!(out[1].1, Ran::Done(()));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(c.next_retry().is_some_and(|t| t > t0));
        // After the backoff it is tried again; failing again doubles the wait.
        let later = Instant::now() + Duration::from_secs(3);
        c.run(later, vec![("a".into(), ())], fail);
        let out = c.run(later, vec![("a".into(), ())], fail);
        assert!(matches!(out[0].1, Ran::Deferred { failures: 2, .. }), "{out:?}");
        // A success forgets the failures.
        let much_later = Instant::now() + Duration::from_secs(10);
        c.run(much_later, vec![("a".into(), ())], |_, ()| ((), false));
        assert_eq!(c.run(much_later, vec![("a".into(), ())], |_, ()| ((), false))[0].1, Ran::Done(()));
        assert_eq!(c.next_retry(), None);
    }

    #[test]
    fn the_api_and_the_reconciler_take_turns_on_a_vm() {
        let c = Arc::new(Controller::new(4));
        let api = c.lock("a");
        let held = lock(&api);
        let (tx, rx) = mpsc::channel();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            c2.run(Instant::now(), vec![("a".into(), ())], |_, ()| {
                tx.send(()).unwrap();
                ((), false)
            })
        });
        // The reconciler's work on "a" cannot begin while the API holds the VM.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(20)).expect("the reconciler ran once the API let go");
        t.join().unwrap();
    }
}
