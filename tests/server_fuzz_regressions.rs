//! The fuzz target's checks (fuzz/fuzz_targets/frame.rs) over its seed
//! corpus and over every input the fuzzer ever found a problem with
//! (tests/fuzz_cases/, one file per input): decoding and dispatch never
//! panic, a decoded frame re-encodes to itself, and every frame the server
//! sends back decodes.

use std::path::Path;

use pichat::protocol::{ClientFrame, ServerFrame};
use pichat::server::fuzzing::Harness;

fn check(h: &mut Harness, name: &str, text: &str) -> usize {
    let _ = ServerFrame::decode(text);
    if let Ok(frame) = ClientFrame::decode(text) {
        let again = ClientFrame::decode(&frame.encode()).expect("re-encoded frame decodes");
        assert_eq!(again, frame, "{name}");
    }
    let (out, _) = h.frame(text);
    for f in &out {
        if !f.starts_with("<close") {
            ServerFrame::decode(f)
                .unwrap_or_else(|e| panic!("{name}: undecodable reply ({e}): {f}"));
        }
    }
    out.len()
}

fn inputs(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(prefix) && name != "README.md" && !name.starts_with('.')
                })
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn seeds_and_found_cases_pass_the_fuzz_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = inputs(&root.join("fuzz/corpus/frame"), "seed-");
    assert!(seeds.len() >= 16, "the seed corpus is there");
    let cases = inputs(&root.join("tests/fuzz_cases"), "");
    let mut h = Harness::new();
    let mut replies = 0;
    for (name, bytes) in seeds.iter().chain(cases.iter()) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            replies += check(&mut h, name, text);
        }
    }
    // The seeds are valid requests: each got at least one reply.
    assert!(replies >= seeds.len(), "{replies}");
}

#[test]
fn the_harness_runs_a_whole_conversation() {
    let mut h = Harness::new();
    let c = "0190e7a4-5b6c-7d8e-9f00-aaaaaaaaaaaa";
    let (out, open) = h.frame(&format!(
        r#"{{"action":"create_conversation","request_id":"1","payload":{{"id":"{c}"}}}}"#
    ));
    assert!(open);
    assert!(out[0].contains("conversation_created"), "{out:?}");
    let (out, _) = h.frame(&format!(
        r#"{{"action":"send_message","request_id":"2","payload":{{"conversation_id":"{c}","content":"echo this back"}}}}"#
    ));
    let actions: Vec<String> = out
        .iter()
        .map(|f| ServerFrame::decode(f).unwrap().body.action().to_string())
        .collect();
    assert_eq!(actions.first().map(String::as_str), Some("message_sent"));
    assert_eq!(actions.last().map(String::as_str), Some("typing_indicator"));
    assert!(
        out.iter()
            .any(|f| f.contains(r#""content":"echo this back""#) && f.contains("assistant"))
    );
    let (out, open) = h.frame("not json");
    assert!(!open);
    assert_eq!(out.last().map(String::as_str), Some("<close 1007>"));
}
