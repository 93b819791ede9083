//! Fuzz target: one WebSocket text frame through the server's decoding and
//! dispatch (a real store in a temporary directory, an echoing LLM), plus
//! both decoders on their own. Checks that nothing panics and that every
//! frame the server sends back is JSON the protocol can decode.

#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pichat::protocol::{ClientFrame, ServerFrame};
use pichat::server::fuzzing::Harness;

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (the WebSocket layer checks).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ServerFrame::decode(text);
    match ClientFrame::decode(text) {
        Ok(frame) => {
            // What decodes re-encodes and decodes to the same frame.
            let again = ClientFrame::decode(&frame.encode()).expect("re-encoded frame decodes");
            assert_eq!(again, frame);
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
    let harness = HARNESS.get_or_init(|| Mutex::new(Harness::new()));
    let mut h = harness.lock().unwrap_or_else(|p| p.into_inner());
    let (out, _open) = h.frame(text);
    for frame in out {
        if frame.starts_with("<close") {
            continue;
        }
        ServerFrame::decode(&frame)
            .unwrap_or_else(|e| panic!("the server sent a frame it cannot decode ({e}): {frame}"));
    }
});
