//! The `wav` fuzz target's checks (fuzz/fuzz_targets/wav.rs) over its seed
//! corpus and over every WAV input the fuzzer ever found a problem with
//! (tests/fuzz_cases/wav-*): decoding and resampling never panic, and what
//! decodes converts to 16 kHz with exactly the length its header says.

use std::path::Path;

use pichat::audio::wav::decode::fuzz_check;

fn inputs(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn seeds_and_found_cases_pass_the_fuzz_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = inputs(&root.join("fuzz/corpus/wav"), "seed-");
    assert!(seeds.len() >= 10, "the seed corpus is there");
    for (name, bytes) in &seeds {
        // The seeds are valid WAVs of each format.
        let clip = pichat::audio::wav::decode::clip_from_bytes(
            bytes,
            &pichat::audio::wav::Limits::stt(std::time::Duration::from_secs(60)),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!clip.pcm.is_empty(), "{name}");
        fuzz_check(bytes);
    }
    for (name, bytes) in inputs(&root.join("tests/fuzz_cases"), "wav-") {
        eprintln!("{name}");
        fuzz_check(&bytes);
    }
}
