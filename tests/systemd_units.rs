//! The systemd units in `systemd/`, checked offline with the real
//! `systemd-analyze`: `verify` prints nothing, `security --offline=true`
//! scores at most 2.0, and the hardening keeps what pichat needs (devices,
//! groups, socket families, directories, sd_notify).
//!
//! `systemd-analyze` must be installed (`scripts/deps.sh --test` installs
//! Debian's `systemd` package): without it these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DAEMON: &str = "pichat.service";
const SERVER: &str = "pichat-server.service";
const UNITS: [&str; 2] = [DAEMON, SERVER];
/// The highest exposure score accepted (systemd-analyze's scale, 0.0 to 10.0).
const MAX_EXPOSURE: f64 = 2.0;
/// Where the units expect the binary (the .deb and install.sh put it there).
const BIN: &str = "/usr/bin/pichat";

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

fn unit_text(name: &str) -> String {
    let path = unit_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `systemd-analyze ARGS`; a missing tool is a failure, with the fix.
fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install Debian's `systemd` package \
                 (scripts/deps.sh --test does)"
            )
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `systemd-analyze security --offline=true --threshold=20 UNIT`: the
/// overall exposure score, and whether the threshold check passed.
fn exposure(unit: &Path) -> (f64, bool, String) {
    let unit_s = unit.to_str().unwrap();
    let out = analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        unit_s,
    ]);
    let all = text(&out);
    let name = unit.file_name().unwrap().to_str().unwrap();
    let prefix = format!("Overall exposure level for {name}: ");
    let score = all
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!("no '{prefix}N.N' line in systemd-analyze security output:\n{all}")
        });
    (score, out.status.success(), all)
}

/// `systemd-analyze verify` on a copy of the unit whose `/usr/bin/pichat`
/// is the binary cargo just built (verify wants ExecStart to exist).
/// Returns everything it printed, and its exit status.
fn verify(name: &str, unit: &str) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(name);
    std::fs::write(&copy, unit.replace(BIN, env!("CARGO_BIN_EXE_pichat"))).unwrap();
    let out = analyze(&["verify", "--man=no", "--no-pager", copy.to_str().unwrap()]);
    (text(&out), out.status.success())
}

/// Every `Key=value` of a section, in order (comments and blanks skipped).
fn directives(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut found = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
        {
            found.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    found
}

/// The values of `key` in `[Service]` (all of them: some keys repeat).
fn values(unit: &str, key: &str) -> Vec<String> {
    directives(unit, "Service")
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn one(unit: &str, name: &str, key: &str) -> String {
    let v = values(unit, key);
    assert_eq!(v.len(), 1, "{name}: want exactly one {key}=, got {v:?}");
    v[0].clone()
}

/// All space-separated words of every `key=` line.
fn words(unit: &str, key: &str) -> Vec<String> {
    values(unit, key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn both_units_score_at_most_2_0() {
    for name in UNITS {
        let (score, passed, out) = exposure(&unit_path(name));
        eprintln!("{name}: exposure {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{name}: exposure {score} > {MAX_EXPOSURE}; the ✗ lines say which settings cost:\n{out}"
        );
        assert!(
            passed,
            "{name}: systemd-analyze security --threshold=20 failed although the score is {score}:\n{out}"
        );
    }
}

#[test]
fn verify_prints_nothing_for_both_units() {
    for name in UNITS {
        let (out, ok) = verify(name, &unit_text(name));
        assert!(
            ok && out.is_empty(),
            "systemd-analyze verify systemd/{name} (with {BIN} -> the built binary) must print \
             nothing and succeed; it printed:\n{out}"
        );
    }
}

/// The two checks above can fail: an unhardened unit scores far above 2.0
/// and fails the threshold, and verify reports unknown keys and bad values
/// (while still exiting 0, hence the empty-output rule).
#[test]
fn the_checks_catch_bad_units() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.service");
    std::fs::write(&bare, "[Service]\nExecStart=/usr/bin/pichat run\n").unwrap();
    let (score, passed, out) = exposure(&bare);
    assert!(score > 5.0 && !passed, "an unhardened unit: {out}");

    let daemon = unit_text(DAEMON);
    let broken = daemon
        .replace("Restart=on-failure", "Restart=sometimes")
        .replace("[Service]\n", "[Service]\nNoSuchKey=1\n");
    let (out, _) = verify(DAEMON, &broken);
    assert!(
        out.contains("NoSuchKey") && out.contains("sometimes"),
        "verify should report both problems, printed:\n{out}"
    );
}

/// What the service manager must give pichat for `run` and `serve` to work.
fn assert_common(name: &str, unit: &str, subcommand: &str) {
    let exec = format!("{BIN} {subcommand}");
    assert_eq!(one(unit, name, "ExecStart"), exec, "{name}");
    assert_eq!(one(unit, name, "Type"), "notify", "{name}");
    assert_eq!(one(unit, name, "NotifyAccess"), "main", "{name}");
    assert_eq!(
        one(unit, name, "ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "{name}"
    );
    assert!(!one(unit, name, "WatchdogSec").is_empty(), "{name}");
    assert_eq!(one(unit, name, "Restart"), "on-failure", "{name}");
    assert_eq!(one(unit, name, "User"), "pichat", "{name}");
    assert_eq!(one(unit, name, "Group"), "pichat", "{name}");
    assert!(
        values(unit, "DynamicUser").is_empty(),
        "{name}: static user"
    );
    assert_eq!(one(unit, name, "StateDirectory"), "pichat", "{name}");
    assert_eq!(
        one(unit, name, "ConfigurationDirectory"),
        "pichat",
        "{name}"
    );
    // Engines and clients over TCP (IPv4 and IPv6), the control socket and
    // the resolver over AF_UNIX; no blanket network cut-off.
    let families = words(unit, "RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.iter().any(|w| w == f),
            "{name}: {f} in {families:?}"
        );
    }
    assert!(
        !families.iter().any(|w| w.starts_with('~')),
        "{name}: {families:?}"
    );
    for key in ["PrivateNetwork", "IPAddressDeny"] {
        assert!(
            values(unit, key).is_empty(),
            "{name}: {key} cuts the network"
        );
    }
    let umask = u32::from_str_radix(&one(unit, name, "UMask"), 8).unwrap();
    assert_eq!(
        umask & 0o700,
        0,
        "{name}: the owner must keep rw on its files"
    );
    assert!(
        words(unit, "ExecStart").len() == 2 && !unit.contains("ExecStartPre"),
        "{name}: pichat itself is the main process (NotifyAccess=main)"
    );
    assert!(
        directives(unit, "Install").contains(&("WantedBy".into(), "multi-user.target".into())),
        "{name}: enable must hook it into boot"
    );
}

#[test]
fn the_daemon_keeps_audio_gpio_and_its_socket() {
    let unit = unit_text(DAEMON);
    assert_common(DAEMON, &unit, "run");
    let groups = words(&unit, "SupplementaryGroups");
    for g in ["audio", "gpio"] {
        assert!(groups.iter().any(|w| w == g), "group {g} in {groups:?}");
    }
    // /run/pichat/pichat.sock: pichat chmods the socket to 0660; the
    // directory must let group pichat through.
    assert_eq!(one(&unit, DAEMON, "RuntimeDirectory"), "pichat");
    assert_eq!(one(&unit, DAEMON, "RuntimeDirectoryMode"), "0750");
    // Devices: a closed policy with ALSA and both GPIO interfaces allowed.
    assert_eq!(one(&unit, DAEMON, "DevicePolicy"), "closed");
    let allowed = values(&unit, "DeviceAllow");
    for dev in [
        "char-alsa rw",
        "char-gpiochip rw",
        "/dev/gpiomem rw",
        "/dev/gpiomem0 rw",
    ] {
        assert!(allowed.iter().any(|a| a == dev), "{dev} in {allowed:?}");
    }
    assert!(
        !values(&unit, "PrivateDevices").contains(&"yes".to_string()),
        "PrivateDevices=yes hides /dev/snd and /dev/gpiomem"
    );
    // rppal reads /proc/cpuinfo to identify the Pi.
    assert!(
        values(&unit, "ProcSubset").is_empty(),
        "rppal needs /proc/cpuinfo"
    );
}

#[test]
fn the_server_keeps_the_network_and_not_the_daemons_runtime_dir() {
    let unit = unit_text(SERVER);
    assert_common(SERVER, &unit, "serve");
    // systemd removes a RuntimeDirectory= when its unit stops: sharing
    // /run/pichat would delete the daemon's socket.
    let rt = one(&unit, SERVER, "RuntimeDirectory");
    assert_ne!(rt, "pichat", "the server must not own /run/pichat");
    assert!(values(&unit, "SupplementaryGroups").is_empty());
    assert_eq!(one(&unit, SERVER, "PrivateDevices"), "yes");
    // Open files for the default limits: 10,000 connections, 512 handshake
    // places, 64 kept for the rest (src/server/fdlimit.rs).
    let nofile: u64 = one(&unit, SERVER, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 10_000 + 512 + 64, "LimitNOFILE={nofile}");
    let daemon = unit_text(DAEMON);
    let nofile: u64 = one(&daemon, DAEMON, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 1024, "LimitNOFILE={nofile}");
}
