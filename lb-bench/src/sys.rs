//! Machine facts and small OS helpers.

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Pins the calling thread to `cpu`. BPF_PROG_TEST_RUN runs skb and XDP
/// programs on the calling CPU, so this pins the measured program too.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A line from `/proc/<pid>/status` (e.g. `VmHWM`), in KiB.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat` (`utime` + `stime`, in clock ticks).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are 11, 12.
    let tick = |i: usize| -> Result<u64> { fields.get(i).and_then(|v| v.parse().ok()).with_context(|| format!("{path}: field {}", i + 3)) };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: trivial libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz))
}

/// CPU time (user + system) of this process's terminated and reaped
/// children so far (`getrusage(RUSAGE_CHILDREN)`). The difference around
/// one command that was waited for is that command's CPU time.
pub fn children_cpu() -> Duration {
    // SAFETY: a zeroed rusage is valid; getrusage writes inside it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Total softirq and total CPU time (all CPUs), in clock ticks.
pub fn cpu_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let softirq = v.get(6).copied().unwrap_or(0);
    let total = v.iter().take(8).sum();
    (softirq, total)
}

/// Busy and total CPU time (all CPUs), in clock ticks.
fn busy_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Stops an agent the way its DaemonSet is stopped: SIGTERM, then up to
/// 10 s for it to exit; past that it is killed. Reaped either way.
pub fn stop_agent(child: &mut std::process::Child) -> std::io::Result<()> {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the machine is quiet (under 10 % of all CPUs busy over
/// half a second) or `max` has passed; returns how long it waited. The
/// kernel tears a deleted network namespace down asynchronously; the next
/// datapath should not be measured during that (a namespace with kube-proxy's
/// 10k-Service nftables table took about a second here).
pub fn wait_quiet(max: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let (b0, t0) = busy_ticks();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (b1, t1) = busy_ticks();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.10 || start.elapsed() >= max {
            return start.elapsed();
        }
    }
}

/// Machine, kernel and tool versions for the report.
pub fn machine() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    out.push(("CPU".into(), format!("{model}, {} online CPUs", online_cpus())));
    let mem = status_line("/proc/meminfo", "MemTotal").unwrap_or_default();
    out.push(("Memory".into(), mem));
    let uname = cmd_out("uname", &["-srvm"]).unwrap_or_default();
    out.push(("Kernel".into(), uname));
    if let Ok(os) = fs::read_to_string("/etc/os-release")
        && let Some(p) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))
    {
        out.push(("OS".into(), p.trim_matches('"').to_string()));
    }
    let virt = cmd_out("systemd-detect-virt", &[])
        .unwrap_or_else(|| if cpuinfo.contains(" hypervisor") { "a hypervisor (VM)".into() } else { "none detected".into() });
    out.push(("Virtualization".into(), virt));
    // What the datapath's load depends on (see docs/real-node.md, "Kernels
    // that refuse XDP metadata").
    let meta = match lb_agent::kernel_probe::xdp_adjust_meta() {
        Ok(true) => "given: lb_xdp marks the frames it DNATs to a pod of the node for BPF host routing".into(),
        Ok(false) => "refused by this kernel: lb_tc_ext_ingress looks every packet from outside up in conntrack instead (BPF host routing of north-south traffic in XDP mode)".into(),
        Err(e) => format!("not probed ({e})"),
    };
    out.push(("XDP metadata (`bpf_xdp_adjust_meta`)".into(), meta));
    for (tool, args) in [("iptables", &["-V"][..]), ("nft", &["-v"][..])] {
        if let Some(v) = cmd_out(tool, args) {
            out.push((tool.into(), v));
        }
    }
    out
}

fn status_line(path: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
}

fn cmd_out(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` with `input` on stdin; returns how long it took (spawn to
/// exit). Fails with its stderr unless it succeeds.
pub fn timed_stdin(cmd: &mut Command, input: &str) -> Result<Duration> {
    Ok(run_stdin(cmd, input, None)?.expect("no timeout"))
}

/// How long a command took, or that it was stopped at the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Took {
    Ran(Duration),
    /// Killed after this long.
    Over(Duration),
    NotRun,
}

impl Took {
    pub fn ran(&self) -> Option<Duration> {
        match self {
            Took::Ran(d) => Some(*d),
            _ => None,
        }
    }
}

/// [`timed_stdin`] with a time budget: a command still running after
/// `timeout` is killed and `None` returned.
pub fn run_stdin(cmd: &mut Command, input: &str, timeout: Option<Duration>) -> Result<Option<Duration>> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_string();
    // A thread of its own: the child may not read everything before it
    // starts working (or gets killed).
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, start.elapsed()));
    });
    let (status, took) = match timeout {
        None => rx.recv().context("waiting for the command")?,
        Some(t) => match rx.recv_timeout(t) {
            Ok(r) => r,
            Err(_) => {
                // SAFETY: kill(2) on our own child, not yet reaped (the
                // waiter thread reaps it after this).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv();
                let _ = writer.join();
                let _ = reader.join();
                return Ok(None);
            }
        },
    };
    let status = status?;
    let _ = writer.join();
    let err = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{:?} failed ({}): {}", cmd.get_program(), status, err.lines().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(Some(took))
}

/// `cmd` as a shell shows it (program, then arguments), for the log.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// A private bpffs directory, removed (with its pinned maps) on drop.
pub struct Pins(pub std::path::PathBuf);

impl Pins {
    pub fn new(tag: &str) -> Pins {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Pins(format!("/sys/fs/bpf/lb-bench-{}-{n}-{tag}", std::process::id()).into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = lb_agent::datapath::cleanup(&self.0);
    }
}
