//! `scripts/install.sh --root DIR` into a scratch root that holds only
//! account files: the user and groups, the files, the enable symlink, and
//! that a second run changes nothing (an edited config is kept, a lost group
//! membership is restored). As root, as on the Pi and in CI; as another user
//! the script must refuse.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A root with the account files of a fresh system: root, and group audio.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    for (name, text, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644),
        ("group", "root:x:0:\naudio:x:29:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("gshadow", "root:*::\naudio:*::\n", 0o640),
    ] {
        let p = etc.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    root
}

/// Runs install.sh; returns (success, stdout + stderr).
fn install(args: &[&str]) -> (bool, String) {
    let out = Command::new(repo("scripts/install.sh"))
        .args(args)
        .output()
        .expect("cannot run scripts/install.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The members of GROUP in ROOT/etc/group.
fn members(root: &Path, group: &str) -> Vec<String> {
    let groups = read(&root.join("etc/group"));
    let line = groups
        .lines()
        .find(|l| l.starts_with(&format!("{group}:")))
        .unwrap_or_else(|| panic!("no group {group} in:\n{groups}"));
    let list = line.rsplit(':').next().unwrap();
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn install_into_a_scratch_root_then_again() {
    let root = scratch_root();
    let r = root.path();
    let r_s = r.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_pichat");

    if !is_root() {
        let (ok, out) = install(&["--root", r_s, bin]);
        assert!(!ok && out.contains("run as root"), "as non-root: {out}");
        return;
    }

    let (ok, out) = install(&["--root", r_s, bin]);
    assert!(ok, "install.sh failed:\n{out}");

    // Accounts: a system user in its own group, and in audio and gpio.
    let passwd = read(&r.join("etc/passwd"));
    let user = passwd
        .lines()
        .find(|l| l.starts_with("pichat:"))
        .unwrap_or_else(|| panic!("no user pichat:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system uid: {user}");
    assert_eq!(fields[5], "/var/lib/pichat", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let groups = read(&r.join("etc/group"));
    let gid = groups
        .lines()
        .find_map(|l| l.strip_prefix("pichat:x:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no group pichat:\n{groups}"));
    assert_eq!(fields[3], gid, "primary group pichat: {user}");
    assert_eq!(members(r, "audio"), ["pichat"]);
    assert_eq!(members(r, "gpio"), ["pichat"], "gpio is created");

    // Files.
    let installed = r.join("usr/bin/pichat");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(bin).unwrap()
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(
        read(&r.join("etc/pichat/pichat.toml")),
        read(&repo("config/pichat.toml"))
    );
    for unit in ["pichat.service", "pichat-server.service"] {
        assert_eq!(
            read(&r.join("etc/systemd/system").join(unit)),
            read(&repo("systemd").join(unit)),
            "{unit}"
        );
    }
    assert_eq!(
        read(&r.join("usr/share/doc/pichat/README.md")),
        read(&repo("README.md"))
    );

    // Enabled (offline): the daemon, not the server.
    let wants = r.join("etc/systemd/system/multi-user.target.wants");
    assert_eq!(
        std::fs::read_link(wants.join("pichat.service")).unwrap(),
        Path::new("/etc/systemd/system/pichat.service")
    );
    assert!(!wants.join("pichat-server.service").exists());

    // Again, after the admin edited the config and pichat lost group gpio.
    let conf = r.join("etc/pichat/pichat.toml");
    std::fs::write(&conf, "[log]\nlevel = \"debug\"\n").unwrap();
    for file in ["etc/group", "etc/gshadow"] {
        let text = read(&r.join(file));
        let stripped: String = text
            .lines()
            .map(|l| match l.strip_prefix("gpio:") {
                Some(rest) => format!("gpio:{}:\n", rest.rsplit_once(':').unwrap().0),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(r.join(file), stripped).unwrap();
    }
    assert!(members(r, "gpio").is_empty(), "setup: pichat out of gpio");

    let (ok, out) = install(&["--root", r_s, bin]);
    assert!(ok, "second install.sh failed:\n{out}");
    assert!(
        !out.contains("installing"),
        "nothing to copy the second time:\n{out}"
    );
    assert!(out.contains("usermod -a -G gpio pichat"), "{out}");
    assert_eq!(members(r, "gpio"), ["pichat"], "membership restored");
    assert_eq!(
        read(&conf),
        "[log]\nlevel = \"debug\"\n",
        "the admin's config is kept"
    );
    assert!(
        out.contains("/etc/pichat/pichat.toml exists; kept"),
        "{out}"
    );

    // A third run does nothing at all.
    let (ok, out) = install(&["--root", r_s, bin]);
    assert!(ok, "{out}");
    for action in ["groupadd", "useradd", "usermod", "installing", "systemctl"] {
        assert!(
            !out.contains(&format!("==> {action}")),
            "{action} again:\n{out}"
        );
    }

    // Bad input: one line naming the problem.
    let (ok, out) = install(&["--root", r_s, "/nonexistent/pichat"]);
    assert!(
        !ok && out.contains("/nonexistent/pichat is not an executable file"),
        "{out}"
    );
}
