//! The daemon's pid file, so that `followup reload` can find it: `FOLLOWUP_PID_FILE`
//! (the unit sets /run/followup/followup.pid), else `followup.pid` beside followup.toml.

use std::path::{Path, PathBuf};

/// Why `followup reload` could not signal the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no pid file at {0}: is the daemon running? (under systemd: systemctl reload followup)"
    )]
    Missing(PathBuf),
    #[error("cannot read the pid file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the pid file {0} holds no process id")]
    Garbled(PathBuf),
    #[error("process {pid} from {path} is not a running followup daemon (a stale pid file; under systemd: systemctl reload followup)")]
    Stale { pid: i32, path: PathBuf },
    #[error("cannot signal process {pid}: {source} (run as the daemon's user, or: systemctl reload followup)")]
    Signal { pid: i32, source: std::io::Error },
    #[error("reload is for Unix")]
    Unsupported,
}

/// Where the pid file of the daemon of `config` is.
pub fn path(config: &Path) -> PathBuf {
    match std::env::var_os("FOLLOWUP_PID_FILE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("followup.pid"),
    }
}

/// The pid file while the daemon runs; removed when dropped, unless another daemon
/// wrote its own meanwhile.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: String,
}

impl PidFile {
    pub fn write(path: PathBuf) -> std::io::Result<PidFile> {
        let pid = std::process::id().to_string();
        std::fs::write(&path, format!("{pid}\n"))?;
        Ok(PidFile { path, pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends SIGHUP to the daemon whose pid file is at `path`; returns its pid.
pub fn signal_reload(path: &Path) -> Result<i32, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Missing(path.to_path_buf()))
        }
        Err(e) => return Err(Error::Read(path.to_path_buf(), e)),
    };
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| Error::Garbled(path.to_path_buf()))?;
    #[cfg(target_os = "linux")]
    {
        // A pid is reused after the process ends: only a followup gets the signal.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("followup") {
            return Err(Error::Stale {
                pid,
                path: path.to_path_buf(),
            });
        }
    }
    #[cfg(unix)]
    {
        let target =
            rustix::process::Pid::from_raw(pid).ok_or(Error::Garbled(path.to_path_buf()))?;
        rustix::process::kill_process(target, rustix::process::Signal::HUP).map_err(|e| {
            Error::Signal {
                pid,
                source: e.into(),
            }
        })?;
        Ok(pid)
    }
    #[cfg(not(unix))]
    Err(Error::Unsupported)
}

/// The pid of a followup daemon that the pid file at `path` names and that runs.
pub fn running(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    #[cfg(target_os = "linux")]
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.trim().starts_with("followup").then_some(pid)
    }
    #[cfg(not(target_os = "linux"))]
    Some(pid)
}
