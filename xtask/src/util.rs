//! Small helpers shared by the commands: paths, finding programs, running
//! child processes with errors that name the command.

use std::{
    env,
    ffi::OsString,
    fmt::Display,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Context as _, Result, bail};

/// Env var through which lb-agent's build.rs receives the eBPF object path.
pub const EBPF_OBJECT_ENV: &str = "LB_EBPF_OBJECT";

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Prints one line for a setup/build step that is actually being performed.
pub fn step(message: impl Display) {
    eprintln!("xtask: {message}");
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin` or `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|dir| dir.join("bin"))
}

/// `PATH` with cargo's bin dir in front, so freshly installed tools are found.
pub fn search_path() -> OsString {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs = cargo_bin_dir().into_iter().chain(env::split_paths(&path));
    env::join_paths(dirs).unwrap_or(path)
}

/// Finds an executable in [`search_path`] or the sbin directories (which a
/// non-login root shell may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    env::split_paths(&search_path()).chain(sbin).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|part| part.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) unless it
/// exits successfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exit code to hand on for a child's exit status.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    if status.success() {
        return ExitCode::SUCCESS;
    }
    match status.code().and_then(|code| u8::try_from(code).ok()) {
        Some(code) if code != 0 => ExitCode::from(code),
        _ => ExitCode::FAILURE,
    }
}

/// Removes the variables cargo sets for the running xtask binary, so they do
/// not leak into child cargo invocations.
pub fn clear_cargo_env(cmd: &mut Command) {
    const EXACT: &[&str] = &[
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_MAKEFLAGS",
    ];
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_CFG_", "CARGO_FEATURE_"];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if EXACT.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
            cmd.env_remove(key);
        }
    }
}

/// The cargo that runs this xtask (same toolchain), in the workspace root.
pub fn host_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    clear_cargo_env(&mut cmd);
    cmd.current_dir(workspace_root());
    cmd
}

/// Fails unless the effective user is root.
pub fn require_root(command: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "`cargo xtask {command}` must run as root (it creates network namespaces, \
             loads eBPF programs and mounts bpffs); run it again with sudo or as root"
        );
    }
    Ok(())
}
