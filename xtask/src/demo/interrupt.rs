//! Ctrl-C (SIGINT) and SIGTERM: a flag the demo checks between steps, so
//! that it tears the lab down instead of dying with it half built.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the flag instead of killing the process.
pub fn install() -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        set_disposition(signal, handler as libc::sighandler_t)?;
    }
    Ok(())
}

/// Ignores SIGINT and SIGTERM from now on, so that a second Ctrl-C cannot
/// cut the teardown short. Children spawned afterwards (`ip netns del`,
/// `lb-agent uninstall`) inherit the ignored disposition and finish too.
pub fn ignore() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let _ = set_disposition(signal, libc::SIG_IGN);
    }
}

fn set_disposition(signal: libc::c_int, handler: libc::sighandler_t) -> Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only stores an atomic.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        bail!("installing the handler for signal {signal}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once Ctrl-C arrived.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, returning early (with an error) on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}
