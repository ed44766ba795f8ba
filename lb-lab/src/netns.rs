//! Named network namespaces (`ip netns`), entered per thread or per child.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Prefix of every namespace this crate creates: `lb-<pid>-<counter>-<role>`.
pub const NAME_PREFIX: &str = "lb-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `ip netns add` sets up `/run/netns` as a shared bind mount the first time it
/// runs; concurrent first runs can stack mounts. Serialize our own calls.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace, deleted (`ip netns del`) on drop.
///
/// Dropping only removes the name: the kernel keeps the namespace (and the
/// interfaces in it) alive while anything still references it — an open
/// socket, a thread or a process inside it. Kill children started with
/// [`Netns::command`] (or use [`Netns::spawn`]) and drop servers before the
/// `Netns`, otherwise the namespace outlives its name.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates a namespace named `lb-<pid>-<counter>-<role>` and brings `lo` up.
    ///
    /// `role` is sanitized to `[A-Za-z0-9_.-]`.
    pub fn new(role: &str) -> Result<Netns> {
        let role = sanitize_role(role);
        let pid = std::process::id();
        // A stale namespace left by a dead process that had the same pid can
        // collide: skip over existing names.
        for _ in 0..64 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{NAME_PREFIX}{pid}-{n}-{role}");
            let path = PathBuf::from(NETNS_RUN_DIR).join(&name);
            if path.exists() {
                continue;
            }
            {
                let _guard = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                run_ip(&["netns", "add", &name])?;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = run_ip(&["netns", "del", &name]);
                    return Err(e).with_context(|| format!("open {}", path.display()));
                }
            };
            // From here on, Drop cleans up.
            let ns = Netns { name, file };
            ns.ip(&["link", "set", "lo", "up"])?;
            return Ok(ns);
        }
        bail!("could not find a free netns name for role {role:?}")
    }

    /// The `ip netns` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// The inode number of the namespace (what `/proc/<pid>/ns/net` shows as `net:[<ino>]`).
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata().context("fstat netns fd")?.ino())
    }

    /// Runs `f` on a fresh thread that has `setns(CLONE_NEWNET)`'d into this
    /// namespace, and waits for it. Only the network namespace changes (mount
    /// namespace, `/sys/fs/bpf`, cgroups stay as they are). Sockets created
    /// inside stay in this namespace after the thread exits; threads spawned
    /// from inside `f` start in this namespace too.
    ///
    /// A panic in `f` is propagated to the caller.
    ///
    /// Note: `/proc/net/...` is `/proc/self/net` and shows the namespace of
    /// the *main thread*; use `/proc/thread-self/net/...` inside `f`.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self.file.as_fd();
        let result = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(thread_name(&self.name))
                .spawn_scoped(s, move || {
                    enter(fd).unwrap_or_else(|e| panic!("setns into netns {}: {e}", self.name));
                    f()
                })
                .expect("spawn netns thread")
                .join()
        });
        match result {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Spawns a long-running thread inside this namespace (see [`Netns::run`]).
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = self.file.try_clone().context("dup netns fd")?;
        let ns_name = self.name.clone();
        std::thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || {
                enter(file.as_fd()).unwrap_or_else(|e| panic!("setns into netns {ns_name}: {e}"));
                drop(file);
                f()
            })
            .context("spawn thread")
    }

    /// A [`Command`] whose child enters this network namespace (only) before
    /// `exec`, via `setns` in `pre_exec`. Unlike `ip netns exec`, no mount
    /// namespace is created and `/sys` is not remounted, so `/sys/fs/bpf` and
    /// the cgroup mounts stay visible, and nothing is left behind when the
    /// child exits.
    ///
    /// The child gets `PR_SET_PDEATHSIG(SIGKILL)`: it is killed when the
    /// *thread* that spawned it exits (e.g. the test thread, also after a
    /// panic) or when this process dies. Spawn long-lived children from a
    /// thread that lives as long as they should (not from [`Netns::run`] or a
    /// pool thread).
    ///
    /// Callers must kill (and wait for) children before dropping the
    /// `Netns`; a live child keeps the namespace and its interfaces alive
    /// after the name is deleted. [`Netns::spawn`] does that on drop.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let file = self.file.try_clone().expect("dup netns fd");
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe syscalls and does
        // not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Spawns `cmd` (normally from [`Netns::command`]) and returns a guard
    /// that kills and reaps the child on drop.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?} in netns {}", self.name))?;
        Ok(ChildGuard(Some(child)))
    }

    /// Runs `ip -n <name> <args...>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.ip_output(args).map(drop)
    }

    /// Runs `ip -n <name> <args...>` and returns its stdout.
    pub fn ip_output(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `sysctl -w key=value` inside the namespace. `key` uses dots
    /// (`net.ipv4.conf.all.rp_filter`) or slashes (`net/ipv4/conf/eth0.100/rp_filter`,
    /// needed when an interface name contains a dot).
    ///
    /// Written from a thread that entered the namespace: `/proc/sys/net` shows
    /// the namespace of the thread that opens the file.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        let v = value.to_owned();
        self.run(move || std::fs::write(&path, v.as_bytes())).with_context(|| format!("sysctl -w {key}={value} in netns {}", self.name))
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let v = self.run(move || std::fs::read_to_string(&path)).with_context(|| format!("sysctl {key} in netns {}", self.name))?;
        Ok(v.trim().to_owned())
    }

    /// The `SO_NETNS_COOKIE` of this namespace (see [`crate::netns_cookie`]).
    pub fn cookie(&self) -> Result<u64> {
        self.run(netns_cookie_here)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("lb-lab: cleanup of netns {} failed: {e:#}", self.name);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Kills and reaps the child now.
    pub fn kill(mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.0.take().expect("child present");
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// Gives up ownership without killing.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("child present")
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child present")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deletes namespaces named `lb-<pid>-...` whose creating process no longer
/// exists (left over after a test binary was SIGKILLed). Returns their names.
/// Opt-in: only call it where no other PID namespace shares `/run/netns`.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).context(NETNS_RUN_DIR),
    };
    let me = std::process::id();
    for entry in dir {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NAME_PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        run_ip(&["netns", "del", &name])?;
        removed.push(name);
    }
    Ok(removed)
}

/// Names from `ip netns list`.
pub fn list_netns() -> Result<Vec<String>> {
    let out = run_ip(&["netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

pub(crate) fn run_ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().with_context(|| format!("run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn netns_cookie_here() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("socket for SO_NETNS_COOKIE")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

fn enter(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sanitize_role(role: &str) -> String {
    let s: String =
        role.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' }).take(64).collect();
    if s.is_empty() { "ns".to_owned() } else { s }
}

fn thread_name(name: &str) -> String {
    // Linux thread names are limited to 15 bytes; keep the tail (the role).
    let start = name.len().saturating_sub(15);
    name.get(start..).unwrap_or("netns").to_owned()
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') { key.trim_start_matches('/').to_owned() } else { key.replace('.', "/") };
    PathBuf::from("/proc/sys").join(rel)
}
