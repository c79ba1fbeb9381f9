//! Orderly stop on SIGINT and SIGTERM: the handler only sets a flag; a
//! signal also interrupts KVM_RUN (EINTR) and a blocking wait (ppoll), so the
//! VMM notices within a landmark, stops the guest there and finishes its log.
//! The flag is an input from the outside world, read by the live inputs.
use std::sync::atomic::{AtomicBool, Ordering};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers (without SA_RESTART, so blocking
/// calls return EINTR).
pub fn install_stop_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic (async-signal-safe) and an empty mask is a valid argument.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Runs `spawn` (which starts helper threads) with SIGINT and SIGTERM
/// blocked, so the threads it starts inherit the block and every stop signal
/// goes to the calling (vCPU) thread, where it interrupts KVM_RUN or a wait.
pub fn spawning_helpers<T>(spawn: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut stop_signals: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut stop_signals);
        libc::sigaddset(&mut stop_signals, libc::SIGINT);
        libc::sigaddset(&mut stop_signals, libc::SIGTERM);
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &stop_signals, &mut previous);
        let result = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}

fn stats_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

/// Blocks SIGUSR1 in this thread and every thread it starts afterwards, so
/// only the thread of [`serve_stats_signal`] takes it. Call it first.
pub fn block_stats_signal() {
    let set = stats_signal_set();
    // SAFETY: pthread_sigmask only changes this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Runs `on_signal` (e.g. print statistics) on a thread of its own each time
/// SIGUSR1 arrives, whatever the vCPU is doing.
pub fn serve_stats_signal(on_signal: impl Fn() + Send + 'static) {
    let set = stats_signal_set();
    let spawned = std::thread::Builder::new().name("ftvm-stats".into()).spawn(move || loop {
        let mut signal = 0;
        // SAFETY: sigwait reads an initialised set and writes the signal number.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            on_signal();
        }
    });
    if let Err(error) = spawned {
        eprintln!("ftvm: no statistics on SIGUSR1: {error}");
    }
}
