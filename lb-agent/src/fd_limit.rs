//! The process's soft limit of open files (`RLIMIT_NOFILE`). A DaemonSet
//! often starts with systemd's default of 1,024; the agent raises it to the
//! hard limit at start, as Go programs such as kube-proxy do. The
//! benchmarks lower it in the agent's child before exec, to start it as a
//! DaemonSet would.

use std::io;

/// Sets the soft limit to `choose(soft, hard)` (never above the hard
/// limit) and returns it before and after. Only two system calls and no
/// allocation, so a child may call it between fork and exec.
pub fn set_soft(choose: impl FnOnce(u64, u64) -> u64) -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = l.rlim_cur;
    let want = choose(l.rlim_cur, l.rlim_max).min(l.rlim_max);
    if want != before {
        l.rlim_cur = want;
        // SAFETY: a valid rlimit value.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, l.rlim_cur))
}

/// Raises the soft limit to the hard limit, so that many connections at
/// once (each a file descriptor) do not starve the agent's own maps, links
/// and sockets. Returns (before, after).
pub fn raise() -> io::Result<(u64, u64)> {
    set_soft(|_, hard| hard)
}
