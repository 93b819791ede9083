//! Where pichat keeps its files: the system paths under systemd or as root,
//! the XDG equivalents as a normal user.

use std::env;
use std::path::{Path, PathBuf};

pub const SYSTEM_CONFIG: &str = "/etc/pichat/pichat.toml";

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn is_root() -> bool {
    euid() == 0
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match env::var_os(var) {
        Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// The first existing directory from a systemd-provided variable (which may
/// hold several colon-separated paths).
fn systemd_dir(var: &str) -> Option<PathBuf> {
    let v = env::var(var).ok()?;
    v.split(':').find(|s| !s.is_empty()).map(PathBuf::from)
}

/// The config file used when neither `--config` nor `$PICHAT_CONFIG` is given:
/// `/etc/pichat/pichat.toml` if it exists, else `$XDG_CONFIG_HOME/pichat/pichat.toml`.
pub fn default_config_file() -> PathBuf {
    if let Some(d) = systemd_dir("CONFIGURATION_DIRECTORY") {
        return d.join("pichat.toml");
    }
    let system = PathBuf::from(SYSTEM_CONFIG);
    if system.exists() || is_root() {
        system
    } else {
        xdg("XDG_CONFIG_HOME", ".config").join("pichat/pichat.toml")
    }
}

/// Persistent data: `$STATE_DIRECTORY` under systemd, `/var/lib/pichat` as
/// root, else `$XDG_DATA_HOME/pichat`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = systemd_dir("STATE_DIRECTORY") {
        d
    } else if is_root() {
        PathBuf::from("/var/lib/pichat")
    } else {
        xdg("XDG_DATA_HOME", ".local/share").join("pichat")
    }
}

/// Runtime files (the control socket): `$RUNTIME_DIRECTORY` under systemd,
/// `/run/pichat` as root, else `$XDG_RUNTIME_DIR/pichat` (or /tmp).
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = systemd_dir("RUNTIME_DIRECTORY") {
        d
    } else if is_root() {
        PathBuf::from("/run/pichat")
    } else {
        match env::var_os("XDG_RUNTIME_DIR") {
            Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v).join("pichat"),
            _ => env::temp_dir().join(format!("pichat-{}", euid())),
        }
    }
}
