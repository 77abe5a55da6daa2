//! Splitting one operation's output rows over a small pool of compute threads.
//!
//! Threads claim chunks from a shared counter, and the caller waits only for chunks that were
//! claimed, never for a thread that has not woken up: on a busy machine a descheduled helper
//! costs at most the one chunk it holds (the calling thread does the rest), whereas a
//! barrier that every thread must pass costs a whole scheduler time slice. Waiting threads
//! spin briefly, then yield the core, then sleep.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Once, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper polls for work before it sleeps.
const IDLE_POLL: Duration = Duration::from_millis(2);

/// Threads that [`par_rows`] runs on: `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` (which
/// `--threads` sets), else one per core.
pub fn num_threads() -> usize {
    pool().helpers.len() + 1
}

/// Calls `f(rows, out_rows)` for consecutive chunks of at most `grain` rows of `out` (rows of
/// `row_len` values) on all threads; `out_rows` is the part of `out` holding `rows`.
pub fn par_rows<F>(out: &mut [f32], row_len: usize, grain: usize, f: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let n_rows = out.len() / row_len.max(1);
    let grain = grain.max(1);
    if n_rows <= grain || num_threads() == 1 {
        f(0..n_rows, out);
        return;
    }
    let base = out.as_mut_ptr() as usize;
    pool().run(n_rows.div_ceil(grain), &|chunk| {
        let (start, end) = (chunk * grain, ((chunk + 1) * grain).min(n_rows));
        // SAFETY: `run` calls each chunk index once, so the row ranges are disjoint and within
        // `out`, which stays mutably borrowed until `run` has returned, and `run` returns only
        // after every call has finished.
        let rows = unsafe {
            std::slice::from_raw_parts_mut(
                (base as *mut f32).add(start * row_len),
                (end - start) * row_len,
            )
        };
        f(start..end, rows);
    });
}

/// One job: chunk indices `0..n`, claimed through `next`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs chunks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            self.done.fetch_add(1, Release);
        }
    }
}

struct Pool {
    /// The open job (a `Job` on the caller's stack), or null.
    job: AtomicPtr<Job<'static>>,
    /// Bumped for every job; helpers sleep until it changes.
    generation: AtomicUsize,
    /// Helpers that may be looking at `job`; the caller waits for zero before returning.
    active: AtomicUsize,
    helpers: Vec<Helper>,
}

struct Helper {
    thread: OnceLock<Thread>,
    sleeping: AtomicBool,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    static SPAWN: Once = Once::new();
    let pool = POOL.get_or_init(|| {
        let threads = candle_core::utils::get_num_threads().max(1);
        Pool {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            helpers: (1..threads)
                .map(|_| Helper { thread: OnceLock::new(), sleeping: AtomicBool::new(false) })
                .collect(),
        }
    });
    SPAWN.call_once(|| {
        for i in 0..pool.helpers.len() {
            let spawned = std::thread::Builder::new()
                .name(format!("rbee-compute-{i}"))
                .spawn(move || helper_loop(pool, i));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a compute thread");
            }
        }
    });
    pool
}

fn helper_loop(pool: &'static Pool, me: usize) {
    let helper = &pool.helpers[me];
    let _ = helper.thread.set(std::thread::current());
    let mut seen = pool.generation.load(Acquire);
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        while pool.generation.load(Acquire) == seen {
            spins += 1;
            if spins.is_multiple_of(64) {
                if since.elapsed() > IDLE_POLL {
                    helper.sleeping.store(true, SeqCst);
                    if pool.generation.load(SeqCst) == seen {
                        std::thread::park();
                    }
                    helper.sleeping.store(false, SeqCst);
                } else {
                    std::thread::yield_now();
                }
            }
            std::hint::spin_loop();
        }
        seen = pool.generation.load(Acquire);
        pool.active.fetch_add(1, SeqCst);
        let job = pool.job.load(SeqCst);
        // SAFETY: a non-null `job` points to the `Job` of a `run` call that has not returned:
        // `run` clears the pointer and then waits for `active` to drop to zero before its
        // `Job` goes out of scope, and this thread counted itself in `active` before loading.
        if let Some(job) = unsafe { job.as_ref() } {
            job.work();
        }
        pool.active.fetch_sub(1, SeqCst);
    }
}

/// Waits for `ready`, spinning briefly and then yielding the core.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins += 1;
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

impl Pool {
    /// Calls `f(i)` for every `i` in `0..n`, on this thread and the helpers.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        let ptr: *const Job<'_> = &job;
        self.job.store(ptr.cast_mut().cast(), SeqCst);
        self.generation.fetch_add(1, SeqCst);
        for h in &self.helpers {
            if let Some(t) = h.thread.get().filter(|_| h.sleeping.load(SeqCst)) {
                t.unpark();
            }
        }
        job.work();
        wait_until(|| job.done.load(Acquire) == n);
        // Helpers that saw the job may still hold a reference to it; it lives until they let go.
        self.job.store(std::ptr::null_mut(), SeqCst);
        wait_until(|| self.active.load(SeqCst) == 0);
        assert!(!job.panicked.load(Relaxed), "a compute thread panicked");
    }
}
