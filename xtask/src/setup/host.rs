//! Host preparation: Debian packages, bpffs, cgroup2.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, step};

/// (binary that must be on PATH, Debian package providing it)
const PACKAGES: &[(&str, &str)] =
    &[("ip", "iproute2"), ("bpftool", "bpftool"), ("nft", "nftables"), ("iptables", "iptables"), ("sysctl", "procps")];

const BPFFS: &str = "/sys/fs/bpf";

pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_bpffs()?;
    cgroup2_mount()?;
    Ok(())
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES.iter().filter(|(binary, _)| util::find_program(binary).is_none()).map(|&(_, package)| package).collect()
}

fn ensure_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    step(format!("installing Debian packages: {list}"));
    let by_hand = || format!("install them by hand (as root): apt-get update && apt-get install -y {list}");
    util::run(Command::new("apt-get").arg("update")).with_context(by_hand)?;
    util::run(Command::new("apt-get").args(["install", "-y"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(by_hand)?;
    let still_missing = missing_packages();
    if !still_missing.is_empty() {
        bail!("packages installed, but the binaries of {} are still not on PATH; {}", still_missing.join(" "), by_hand());
    }
    Ok(())
}

fn ensure_bpffs() -> Result<()> {
    let mounted = mounts()?.iter().any(|mount| mount.fstype == "bpf" && mount.target == Path::new(BPFFS));
    if mounted {
        return Ok(());
    }
    step(format!("mounting bpffs at {BPFFS}"));
    let by_hand = || format!("mount it by hand (as root): mkdir -p {BPFFS} && mount -t bpf bpf {BPFFS}");
    fs::create_dir_all(BPFFS).with_context(|| format!("could not create {BPFFS}")).with_context(by_hand)?;
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).with_context(by_hand)
}

/// The mount point of a cgroup2 filesystem (the first in /proc/mounts).
pub fn cgroup2_mount() -> Result<PathBuf> {
    match mounts()?.into_iter().find(|mount| mount.fstype == "cgroup2") {
        Some(mount) => Ok(mount.target),
        None => bail!(
            "no cgroup2 filesystem is mounted (none in /proc/mounts); mount one by hand (as root): \
             mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified"
        ),
    }
}

struct Mount {
    target: PathBuf,
    fstype: String,
}

fn mounts() -> Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
    Ok(text.lines().filter_map(parse_mount).collect())
}

/// Parses one /proc/mounts line: `source target fstype options dump pass`.
fn parse_mount(line: &str) -> Option<Mount> {
    let mut fields = line.split_whitespace();
    let _source = fields.next()?;
    let target = unescape(fields.next()?);
    let fstype = fields.next()?.to_owned();
    Some(Mount { target: PathBuf::from(target), fstype })
}

/// Undoes the octal escapes (`\040` for space, ...) of /proc/mounts.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_lines() {
        let mount = parse_mount("bpf /sys/fs/bpf bpf rw,relatime 0 0").expect("valid line");
        assert_eq!(mount.target, Path::new("/sys/fs/bpf"));
        assert_eq!(mount.fstype, "bpf");
        let mount = parse_mount("none /mnt/a\\040b cgroup2 rw 0 0").expect("valid line");
        assert_eq!(mount.target, Path::new("/mnt/a b"));
        assert!(parse_mount("short line").is_none());
    }
}
