//! The C allocator's settings for `lb-agent run`.
//!
//! glibc's malloc gives every thread that contends for the heap an arena of
//! its own, and an arena keeps what was freed in it for its own thread. The
//! agent's large transient allocations (a list page of the API server's
//! JSON, a relist's objects) are made on whichever tokio worker polls the
//! watch at the time, so each worker's arena grew to the transient peak
//! while the store's objects pinned its pages: at 10,000 Services x 10
//! endpoints from the API server the agent peaked at 195 MiB RSS for a
//! 97 MiB peak of live heap. One arena keeps the peak close to the live
//! heap; the agent allocates from a few threads that seldom contend.

/// Limits malloc to one arena. Call before any thread is started.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's parameters; called
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free memory at the top of the heap, and whole free pages
/// inside it, to the kernel: called once the first complete state is
/// written, after the lists' transient allocations are gone.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
