//! A fixed team of threads that all run the same job and meet at spin barriers, the way
//! ggml's CPU backend computes a graph (ggml-cpu.c, ggml_graph_compute_thread): one wake-up
//! per job instead of one fork/join per operation. Generating one token is ~150 small
//! products and element-wise steps of a few microseconds each; forking and joining a rayon
//! pool around each of them cost more than a tenth of the token's time on two cores.
//!
//! Between jobs the workers spin for a short while (tokens follow each other within
//! microseconds) and then park, so an idle team costs nothing.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Keeps a hot atomic on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How long an idle worker keeps polling for the next job before it parks.
const IDLE_SPIN: Duration = Duration::from_micros(500);
/// Polls of a barrier before a waiting thread starts yielding its core (a team member
/// that was descheduled would otherwise be kept off the core by the spinners).
const BARRIER_SPINS: u32 = 1 << 14;

type Job = dyn Fn(usize, &Barrier) + Sync;

pub struct Barrier {
    n: usize,
    arrived: Padded<AtomicUsize>,
    generation: Padded<AtomicUsize>,
    poisoned: AtomicBool,
}

impl Barrier {
    fn new(n: usize) -> Barrier {
        Barrier {
            n,
            arrived: Padded(AtomicUsize::new(0)),
            generation: Padded(AtomicUsize::new(0)),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Returns once every team member has called `wait` as often as this one. Everything
    /// written before the barrier by any member is visible after it to all of them.
    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // The others spin until the generation moves, so none can arrive early at the
            // next barrier before the count is reset.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut backoff = Backoff::default();
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("another thread of the team panicked");
            }
            backoff.snooze();
        }
    }
}

/// Waiting on another team member: spin, then (past `BARRIER_SPINS` polls) yield the core.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn snooze(&mut self) {
        self.0 = self.0.saturating_add(1);
        if self.0 < BARRIER_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

struct Shared {
    barrier: Barrier,
    /// Bumped for every job; workers run a job when they see it change.
    epoch: Padded<AtomicUsize>,
    /// Workers that have finished the current job.
    done: Padded<AtomicUsize>,
    shutdown: AtomicBool,
    /// Set while a job runs: one job at a time.
    busy: AtomicBool,
    /// The current job, valid from an epoch bump until `done` reaches the worker count.
    job: UnsafeCell<Option<*const Job>>,
}

// SAFETY: `job` is written only by `Team::run` while no worker reads it (before the epoch
// bump that publishes it, after every worker reported done), and the job itself is Sync.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
}

impl Team {
    /// A team of `n` threads: the caller of `run` and `n - 1` workers.
    pub fn new(n: usize) -> std::io::Result<Team> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            barrier: Barrier::new(n),
            epoch: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            shutdown: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            job: UnsafeCell::new(None),
        });
        let mut workers = Vec::with_capacity(n - 1);
        for index in 1..n {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("quantfit-team-{index}"))
                .spawn(move || worker(&shared, index))?;
            let thread = handle.thread().clone();
            workers.push((handle, thread));
        }
        Ok(Team { shared, workers })
    }

    pub fn size(&self) -> usize {
        self.shared.barrier.n
    }

    /// Runs `job(member, barrier)` on every member, the caller being member 0, and returns
    /// when all have finished. A panic in any member reaches the caller. Panics if another
    /// job is running on the team.
    pub fn run(&self, job: &(dyn Fn(usize, &Barrier) + Sync)) {
        let shared = &*self.shared;
        assert!(
            !shared.busy.swap(true, Ordering::Acquire),
            "one job at a time on a team"
        );
        // SAFETY: lifetime erasure only; `run` does not return before every worker has
        // finished with the job (`done` below), so the reference outlives its uses.
        let erased: *const Job = unsafe { std::mem::transmute(job as *const _) };
        // SAFETY: no worker reads `job` between jobs (see `Shared`).
        unsafe { *shared.job.get() = Some(erased) };
        shared.done.store(0, Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::Release);
        for (_, thread) in &self.workers {
            thread.unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, &shared.barrier)));
        if mine.is_err() {
            shared.barrier.poisoned.store(true, Ordering::Relaxed);
        }
        let mut backoff = Backoff::default();
        while shared.done.load(Ordering::Acquire) < self.workers.len() {
            backoff.snooze();
        }
        // SAFETY: every worker is done with the job.
        unsafe { *shared.job.get() = None };
        let poisoned = shared.barrier.poisoned.swap(false, Ordering::Relaxed);
        if poisoned {
            // A member panicked mid-count; start the next job from a clean barrier.
            shared.barrier.arrived.store(0, Ordering::Relaxed);
        }
        shared.busy.store(false, Ordering::Release);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if poisoned {
            // The worker's own message was printed by the panic hook.
            panic!("a thread of the decoding team panicked");
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            polls += 1;
            if !polls.is_multiple_of(1024) {
                std::hint::spin_loop();
            } else if started.elapsed() > IDLE_SPIN {
                // An unpark between the epoch check and here makes park return at once.
                std::thread::park();
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: published by the epoch bump (Release/Acquire) and valid until this
        // worker reports done.
        let job = unsafe { (*shared.job.get()).expect("a job comes with every epoch") };
        let result = catch_unwind(AssertUnwindSafe(|| unsafe {
            (*job)(index, &shared.barrier)
        }));
        if result.is_err() {
            shared.barrier.poisoned.store(true, Ordering::Relaxed);
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for (handle, thread) in self.workers.drain(..) {
            thread.unpark();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member sees every other member's writes after each barrier, over many rounds
    /// and jobs, and a panicking member surfaces in the caller without hanging the team.
    #[test]
    fn members_meet_at_barriers_and_panics_surface() {
        for n in [1, 2, 3, 5] {
            let team = Team::new(n).unwrap();
            assert_eq!(team.size(), n);
            for job_round in 0..20usize {
                let slots: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let sums: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.run(&|member, barrier| {
                    for step in 1..=50usize {
                        slots[member].store(step * (member + 1) + job_round, Ordering::Relaxed);
                        barrier.wait();
                        let total: usize = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
                        barrier.wait();
                        sums[member].fetch_add(total, Ordering::Relaxed);
                    }
                });
                let want: usize = (1..=50usize)
                    .map(|step| (1..=n).map(|m| step * m + job_round).sum::<usize>())
                    .sum();
                for s in &sums {
                    assert_eq!(s.load(Ordering::Relaxed), want, "team of {n}");
                }
            }
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let caught = catch_unwind(AssertUnwindSafe(|| {
                team.run(&|member, barrier| {
                    barrier.wait();
                    if member == n - 1 {
                        panic!("member failure");
                    }
                    barrier.wait();
                })
            }));
            std::panic::set_hook(hook);
            assert!(
                caught.is_err(),
                "team of {n}: the panic must reach the caller"
            );
            // The team still works afterwards.
            let count = AtomicUsize::new(0);
            team.run(&|_, barrier| {
                barrier.wait();
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), n);
        }
    }
}
