//! Whether the user asked the running command to stop (SIGINT/SIGTERM). The
//! `ftvm` binary's signal handlers own that flag (they also stop VMs); the
//! binary hands this crate the check with [`set_check`], and long loops here
//! end when it says so.
use std::sync::OnceLock;

static CHECK: OnceLock<fn() -> bool> = OnceLock::new();

/// Installs the check (once; later calls are ignored).
pub fn set_check(check: fn() -> bool) {
    let _ = CHECK.set(check);
}

/// True once a stop was requested (never without a check installed).
pub fn stop_requested() -> bool {
    CHECK.get().is_some_and(|check| check())
}
