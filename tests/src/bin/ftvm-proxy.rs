//! A log-channel proxy as a process of its own, for tests whose pair runs in a network
//! namespace: `ftvm-proxy LISTEN TARGET` forwards one connection; SIGUSR1 then stops the
//! direction towards the backup (TARGET), SIGUSR2 the direction towards the primary.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static CUT_TO_BACKUP: AtomicBool = AtomicBool::new(false);
static CUT_TO_PRIMARY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    let flag = if signal == libc::SIGUSR1 { &CUT_TO_BACKUP } else { &CUT_TO_PRIMARY };
    flag.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target] = &args[..] else {
        eprintln!("usage: ftvm-proxy LISTEN TARGET");
        std::process::exit(2);
    };
    for signal in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let proxy = ftvm_tests::proxy::Proxy::start_on(listen, target);
    eprintln!("ftvm-proxy: {listen} -> {target}");
    loop {
        for (flag, to_backup) in [(&CUT_TO_BACKUP, true), (&CUT_TO_PRIMARY, false)] {
            if flag.swap(false, Ordering::SeqCst) {
                proxy.cut_one_way(to_backup);
                eprintln!(
                    "ftvm-proxy: cut towards the {}",
                    if to_backup { "backup" } else { "primary" }
                );
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
