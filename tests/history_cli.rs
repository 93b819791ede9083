//! The real `pichat history` binary on real SQLite files: every command, and
//! every kind of bad input (one-line error, exit 1, database unchanged).

mod common;

use std::process::Stdio;

use common::{Env, db_bytes, sample_history};

fn with_sample() -> (Env, String) {
    let env = Env::new();
    let db = env.path("h.db");
    let db_s = db.to_str().unwrap().to_string();
    let out = env
        .run(&[
            "history",
            "--db",
            &db_s,
            "import",
            sample_history().to_str().unwrap(),
        ])
        .ok();
    assert!(
        out.contains("imported 3 conversations and 14 messages"),
        "{out}"
    );
    (env, db_s)
}

#[test]
fn import_list_show_search_stats() {
    let (env, db) = with_sample();
    let list = env.run(&["history", "--db", &db, "list", "--json"]).json();
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 3);
    assert_eq!(
        convs[0]["title"], "Raspberry Pi setup",
        "newest activity first"
    );
    assert_eq!(convs[2]["title"], "Geography questions");

    let human = env.run(&["history", "--db", &db, "list"]).ok();
    assert!(human.lines().next().unwrap().starts_with("ID"));
    assert!(human.contains("Kitchen timer and cooking"));

    let geo = convs[2]["id"].as_str().unwrap();
    let show = env
        .run(&["history", "--db", &db, "show", &geo[..8], "--json"])
        .json();
    let msgs = show["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    assert_eq!(msgs[0]["content"], "What is the capital of France?");
    assert_eq!(msgs[1]["role"], "assistant");

    let hits = env
        .run(&["history", "--db", &db, "search", "capital France", "--json"])
        .json();
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits[0]["snippet"].as_str().unwrap().contains("[capital]"));
    let scoped = env
        .run(&[
            "history",
            "--db",
            &db,
            "search",
            "capital",
            "--conversation",
            geo,
            "--json",
        ])
        .json();
    assert_eq!(scoped["hits"].as_array().unwrap().len(), 3);
    let none = env.run(&["history", "--db", &db, "search", "zebra"]).ok();
    assert!(none.contains("no messages match"));

    let stats = env.run(&["history", "--db", &db, "stats", "--json"]).json();
    assert_eq!(stats["messages"], 14);
    assert_eq!(stats["conversations"], 3);
    assert_eq!(stats["assistant_messages"], 7);
    let one = env
        .run(&["history", "--db", &db, "stats", geo, "--json"])
        .json();
    assert_eq!(one["messages"], 6);
    assert_eq!(one["avg_response_time_ms"], 813.0);
}

#[test]
fn import_twice_adds_nothing() {
    let (env, db) = with_sample();
    let before = env.run(&["history", "--db", &db, "export"]).ok();
    let r = env
        .run(&[
            "history",
            "--db",
            &db,
            "import",
            sample_history().to_str().unwrap(),
            "--json",
        ])
        .json();
    assert_eq!(r["messages_added"], 0);
    assert_eq!(r["conversations_added"], 0);
    assert_eq!(r["messages_existing"], 14);
    let after = env.run(&["history", "--db", &db, "export"]).ok();
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("exported_at"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&before), strip(&after));
}

#[test]
fn export_formats_and_round_trip() {
    let (env, db) = with_sample();
    let out = env.path("all.json");
    env.run(&[
        "history",
        "--db",
        &db,
        "export",
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();
    let db2 = env.path("copy.db");
    let db2 = db2.to_str().unwrap();
    env.run(&["history", "--db", db2, "import", out.to_str().unwrap()])
        .ok();
    let a = env
        .run(&["history", "--db", &db, "list", "--all", "--json"])
        .json();
    let b = env
        .run(&["history", "--db", db2, "list", "--all", "--json"])
        .json();
    assert_eq!(a, b);

    let md = env
        .run(&["history", "--db", &db, "export", "--format", "markdown"])
        .ok();
    assert!(md.contains("# Geography questions"));
    assert!(md.contains("**You**"));
    let txt = env
        .run(&["history", "--db", &db, "export", "--format", "text"])
        .ok();
    assert!(txt.contains("You: What is the capital of France?"));
}

#[test]
fn rename_archive_unarchive_delete_cleanup() {
    let (env, db) = with_sample();
    let list = env.run(&["history", "--db", &db, "list", "--json"]).json();
    let id = list["conversations"][0]["id"].as_str().unwrap().to_string();

    let r = env
        .run(&["history", "--db", &db, "rename", &id, "Pi notes", "--json"])
        .json();
    assert_eq!(r["title"], "Pi notes");
    env.run(&["history", "--db", &db, "archive", &id]).ok();
    let active = env.run(&["history", "--db", &db, "list", "--json"]).json();
    assert_eq!(active["conversations"].as_array().unwrap().len(), 2);
    let archived = env
        .run(&["history", "--db", &db, "list", "--archived", "--json"])
        .json();
    assert_eq!(archived["conversations"][0]["id"], id.as_str());
    env.run(&["history", "--db", &db, "unarchive", &id]).ok();
    assert_eq!(
        env.run(&["history", "--db", &db, "list", "--json"]).json()["conversations"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The sample is from November 2026; everything is "idle" for more than 0 days.
    let dry = env
        .run(&[
            "history",
            "--db",
            &db,
            "cleanup",
            "--older-than-days",
            "0",
            "--action",
            "delete",
            "--dry-run",
            "--json",
        ])
        .json();
    assert_eq!(dry["conversations"].as_array().unwrap().len(), 3);
    assert_eq!(
        env.run(&["history", "--db", &db, "stats", "--json"]).json()["conversations"],
        3
    );

    let del = env
        .run(&["history", "--db", &db, "delete", &id, "--yes"])
        .ok();
    assert!(del.contains("deleted"));
    let stats = env.run(&["history", "--db", &db, "stats", "--json"]).json();
    assert_eq!(stats["conversations"], 2);
    assert_eq!(stats["messages"], 10);
    env.run(&["history", "--db", &db, "show", &id])
        .fails_with("no conversation with id");
}

#[test]
fn unknown_ids_and_empty_search_fail_cleanly() {
    let (env, db) = with_sample();
    let before = db_bytes(std::path::Path::new(&db));
    env.run(&["history", "--db", &db, "show", "0000dead"])
        .fails_with("no conversation with id \"0000dead\"");
    env.run(&["history", "--db", &db, "rename", "ffffffff", "x"])
        .fails_with("no conversation");
    env.run(&["history", "--db", &db, "search", "  "])
        .fails_with("the search query is empty");
    env.run(&["history", "--db", &db, "search", "?!"])
        .fails_with("the search query is empty");
    assert_eq!(before, db_bytes(std::path::Path::new(&db)));
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    assert_eq!(env.run(&["history", "frobnicate"]).code(), 2);
    assert_eq!(env.run(&["history", "list", "--limit", "many"]).code(), 2);
    assert_eq!(env.run(&["nonsense"]).code(), 2);
}

#[test]
fn bad_import_files_change_nothing() {
    let (env, db) = with_sample();
    let dbp = std::path::Path::new(&db);
    let before = db_bytes(dbp);
    let good = std::fs::read_to_string(sample_history()).unwrap();

    let truncated = env.path("truncated.json");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    env.run(&[
        "history",
        "--db",
        &db,
        "import",
        truncated.to_str().unwrap(),
    ])
    .fails_with("truncated");

    let garbage = env.path("garbage.json");
    std::fs::write(&garbage, "this is not json").unwrap();
    env.run(&["history", "--db", &db, "import", garbage.to_str().unwrap()])
        .fails_with("garbage.json:1:2: not valid JSON");

    let wrong = env.path("wrong.json");
    std::fs::write(&wrong, good.replace("\"role\": \"user\"", "\"role\": 7")).unwrap();
    env.run(&["history", "--db", &db, "import", wrong.to_str().unwrap()])
        .fails_with("not a pichat history export");

    let missing = env.path("missing.json");
    env.run(&["history", "--db", &db, "import", missing.to_str().unwrap()])
        .fails_with("missing.json");

    assert_eq!(
        before,
        db_bytes(dbp),
        "a failed import changed the database"
    );
    let fresh = env.path("fresh.db");
    env.run(&[
        "history",
        "--db",
        fresh.to_str().unwrap(),
        "import",
        truncated.to_str().unwrap(),
    ])
    .fails_with("truncated");
    assert!(!fresh.exists(), "a failed import created a database");
}

#[test]
fn corrupt_or_foreign_file_is_refused_untouched() {
    let env = Env::new();
    let db = env.path("not-a-db.db");
    let junk: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, &junk).unwrap();
    env.run(&["history", "--db", db.to_str().unwrap(), "list"])
        .fails_with("not a pichat database");
    env.run(&[
        "history",
        "--db",
        db.to_str().unwrap(),
        "import",
        sample_history().to_str().unwrap(),
    ])
    .fails_with("not a pichat database");
    assert_eq!(std::fs::read(&db).unwrap(), junk);
    assert!(!env.path("not-a-db.db-wal").exists());
}

#[test]
fn newer_schema_is_refused_untouched() {
    let (env, db) = with_sample();
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version=99'); c.commit(); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()", &db])
        .status()
        .unwrap();
    assert!(status.success());
    let before = db_bytes(std::path::Path::new(&db));
    env.run(&["history", "--db", &db, "list"])
        .fails_with("schema version 99 is newer than this pichat supports");
    assert_eq!(before, db_bytes(std::path::Path::new(&db)));
}

#[test]
fn missing_database_is_not_created_by_reads() {
    let env = Env::new();
    let db = env.path("nothing-here.db");
    env.run(&["history", "--db", db.to_str().unwrap(), "list"])
        .fails_with("no history database yet");
    assert!(!db.exists());
}

#[test]
fn locked_database_is_reported() {
    let (env, db) = with_sample();
    env.write_config("[history]\nbusy_timeout_ms = 200\n");
    // Another process holds the write lock until we close its stdin.
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
            &db,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let list = env.run(&["history", "--db", &db, "list", "--json"]).json();
    let id = list["conversations"][0]["id"].as_str().unwrap().to_string();
    env.run(&["history", "--db", &db, "rename", &id, "new title"])
        .fails_with("locked by another process");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    env.run(&["history", "--db", &db, "rename", &id, "new title"])
        .ok();
}

#[test]
fn unwritable_directory_is_reported() {
    let env = Env::new();
    let dir = env.path("ro");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("h.db");
    let db_s = db.to_str().unwrap();
    // root ignores permission bits, so run the binary as nobody when we are root.
    let is_root = unsafe { libc::geteuid() } == 0;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(
        common::sample_history().parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .ok();
    let mut cmd = if is_root {
        // A copy of the binary nobody can reach (the checkout may be under /root).
        let bin = env.path("pichat-copy");
        std::fs::copy(env!("CARGO_BIN_EXE_pichat"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_pichat"))
    };
    let sample = env.path("sample.json");
    std::fs::copy(common::sample_history(), &sample).unwrap();
    std::fs::set_permissions(&sample, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(env.config(), "").unwrap();
    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
    cmd.args([
        "--config",
        env.config().to_str().unwrap(),
        "history",
        "--db",
        db_s,
        "import",
        sample.to_str().unwrap(),
    ])
    .env("HOME", env.dir.path());
    // The fresh copy can be "busy" while a test running at the same time
    // forks (its child holds the copy's descriptor until it execs): retry.
    let mut out = cmd.output().unwrap();
    for _ in 0..20 {
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        out = cmd.output().unwrap();
    }
    let r = common::Run(out);
    r.fails_with("cannot open");
    assert!(r.stderr().contains("writable"), "{}", r.stderr());
    assert!(!db.exists());
}

#[test]
fn config_check_lists_every_problem() {
    let env = Env::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pichat.toml");
    let ok = env.run(&["config", "check", example]).ok();
    assert!(ok.contains(": ok"));
    let bad = env.path("bad.toml");
    std::fs::write(&bad, "[audio]\nvolume = 1.5\n\n[ptt]\nsorce = \"gpio\"\ngpio_pin = 99\n[llm]\nengines = [\"ghost\"]\n").unwrap();
    let r = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    let out = r.stdout();
    let lines: Vec<&str> = out.lines().collect();
    let p = bad.to_str().unwrap();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{p}:2: audio.volume: 1.5 is out of range (allowed: 0.0..=1.0)"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{p}:5: ptt.sorce: unknown key (known keys in [ptt]:"
        )),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{p}:6: ptt.gpio_pin: 99 is out of range (allowed: 0..=53)"
        )),
        "{out}"
    );
    assert!(
        lines[3].starts_with(&format!(
            "{p}:8: llm.engines: engine \"ghost\" is not defined"
        )),
        "{out}"
    );
    let r = env.run(&["config", "check", env.path("absent.toml").to_str().unwrap()]);
    assert_eq!(r.code(), 1);
}

#[test]
fn config_show_prints_effective_config() {
    let env = Env::new();
    env.write_config("[audio]\nvolume = 0.5\n");
    let out = env.run(&["config", "show"]).ok();
    assert!(out.contains("volume = 0.5"), "{out}");
    assert!(out.contains("[engines.whisper]"), "{out}");
    let is_root = unsafe { libc::geteuid() } == 0;
    let data = if is_root {
        std::path::PathBuf::from("/var/lib/pichat/history.db")
    } else {
        env.path("xdg-data/pichat/history.db")
    };
    assert!(
        out.contains(&format!("path = \"{}\"", data.display())),
        "resolved history path shown: {out}"
    );
}

#[test]
fn completions_are_generated() {
    let env = Env::new();
    let out = env.run(&["completions", "bash"]).ok();
    assert!(out.contains("pichat"));
}

#[test]
fn control_characters_of_synced_titles_and_messages_are_escaped() {
    // As a sync would store them: text typed anywhere, by anyone.
    let env = Env::new();
    let db = env.path("h.db");
    let db_s = db.to_str().unwrap();
    {
        let mut s =
            pichat::history::Store::open(&db, &pichat::history::OpenOptions::default()).unwrap();
        let c = s
            .create_conversation(pichat::history::NewConversation {
                title: Some("\x1b]0;owned\x07weather \x1b[2J\u{202E}txt".into()),
                ..Default::default()
            })
            .unwrap();
        s.append_message(pichat::history::NewMessage::new(
            &c.id,
            pichat::history::Role::User,
            "rain\x1b[8m hidden\x1b[0m\ntomorrow\tmaybe",
        ))
        .unwrap();
    }
    let list = env.run(&["history", "--db", db_s, "list"]).ok();
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let show = env.run(&["history", "--db", db_s, "show", &id]).ok();
    let search = env.run(&["history", "--db", db_s, "search", "rain"]).ok();
    for (what, out) in [("list", &list), ("show", &show), ("search", &search)] {
        assert!(
            !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{202E}'),
            "{what} printed a control character: {out:?}"
        );
        assert!(out.contains("\\u{1b}"), "{what} shows it escaped: {out}");
    }
    assert!(
        list.contains("\\u{1b}]0;owned\\u{7}weather \\u{1b}[2J\\u{202e}txt"),
        "{list}"
    );
    // A message keeps its lines and tabs.
    assert!(
        show.contains("rain\\u{1b}[8m hidden\\u{1b}[0m\ntomorrow\tmaybe"),
        "{show}"
    );
    assert!(
        search.contains("[rain]"),
        "the match is still marked: {search}"
    );
    // --json gives the exact text.
    let json = env
        .run(&["history", "--db", db_s, "show", &id, "--json"])
        .json();
    assert_eq!(
        json["messages"][0]["content"],
        "rain\x1b[8m hidden\x1b[0m\ntomorrow\tmaybe"
    );
}

#[test]
fn the_history_and_the_server_database_are_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let db = env.path("data/h.db");
    env.run(&[
        "history",
        "--db",
        db.to_str().unwrap(),
        "import",
        common::sample_history().to_str().unwrap(),
    ])
    .ok();
    assert_eq!(mode(&db), 0o600, "the history");
    assert_eq!(mode(&env.path("data")), 0o700, "its new directory");
    for suffix in ["-wal", "-shm"] {
        let side = env.path(&format!("data/h.db{suffix}"));
        if side.exists() {
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
    }
    let srv = env.path("srv/server.db");
    env.write_config(&format!("[server]\ndatabase = \"{}\"\n", srv.display()));
    env.run(&["token", "add", "alice"]).ok();
    assert_eq!(mode(&srv), 0o600, "the server database");
}

#[test]
fn config_show_and_doctor_redact_passwords_and_tokens() {
    let env = Env::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    std::fs::write(env.path("t.token"), "device-token").unwrap();
    env.write_config(&format!(
        "[audio]\ninput = \"wav:{in_wav}\"\noutput = \"wav:{out_wav}\"\n[ptt]\nsource = \"none\"\nsocket = \"{sock}\"\n\
         [history]\npath = \"{h}\"\n\
         [sync]\nurl = \"ws://alice:s3cret-pw@127.0.0.1:{port}/ws?token=tok-in-url\"\ntoken_file = \"{tf}\"\n\
         [stt]\nengines = [\"s\"]\n[llm]\nengines = [\"l\"]\n[tts]\nengines = [\"t\"]\n\
         [engines.s]\nkind = \"openai\"\nurl = \"http://bob:hunter2@127.0.0.1:{port}/v1?api_key=key-in-url\"\ntimeout_ms = 1000\n\
         [engines.l]\nkind = \"openai\"\nurl = \"http://bob:hunter2@127.0.0.1:{port}/v1\"\ntimeout_ms = 1000\n\
         [engines.t]\nkind = \"openai\"\nurl = \"http://127.0.0.1:{port}/v1?token=another\"\ntimeout_ms = 1000\n",
        in_wav = env.path("in.wav").display(),
        out_wav = env.path("out.wav").display(),
        sock = env.path("ctl.sock").display(),
        h = env.path("h.db").display(),
        tf = env.path("t.token").display(),
    ));
    env.write_silence("in.wav", 8000);
    let show = env.run(&["config", "show"]).ok();
    let doctor = env.run(&["doctor"]);
    let doctor = format!("{}{}", doctor.stdout(), doctor.stderr());
    for (what, out) in [("config show", &show), ("doctor", &doctor)] {
        for secret in [
            "s3cret-pw",
            "tok-in-url",
            "hunter2",
            "key-in-url",
            "another",
        ] {
            assert!(!out.contains(secret), "{what} printed {secret}: {out}");
        }
    }
    assert!(show.contains("ws://alice:***@127.0.0.1"), "{show}");
    assert!(show.contains("?token=***"), "{show}");
    assert!(show.contains("http://bob:***@127.0.0.1"), "{show}");
    assert!(
        doctor.contains("127.0.0.1"),
        "the addresses are still shown: {doctor}"
    );
}

#[test]
fn the_new_limits_are_checked_at_the_limit_and_one_past_it() {
    let env = Env::new();
    let f = env.path("limits.toml");
    for (table, key, ok, past) in [
        ("stt", "max_seconds", 600, 601),
        ("tts", "max_seconds", 3600, 3601),
        ("server", "read_connections", 64, 65),
    ] {
        std::fs::write(&f, format!("[{table}]\n{key} = {ok}\n")).unwrap();
        env.run(&["config", "check", f.to_str().unwrap()]).ok();
        std::fs::write(&f, format!("[{table}]\n{key} = {past}\n")).unwrap();
        let r = env.run(&["config", "check", f.to_str().unwrap()]);
        assert_eq!(r.code(), 1, "{table}.{key} = {past}");
        assert!(
            r.stdout()
                .contains(&format!("{table}.{key}: {past} is out of range")),
            "{}",
            r.stdout()
        );
    }
    std::fs::write(&f, "[server]\nread_connections = 0\n").unwrap();
    env.run(&["config", "check", f.to_str().unwrap()]).ok();
}
