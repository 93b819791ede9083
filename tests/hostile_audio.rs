//! Hostile WAV headers against the real server over a real socket: a token
//! holder's `speech_to_text` claiming 4,294,967,291 Hz, 1 Hz, 9 channels,
//! 64-bit floats or more than `stt.max_seconds` gets `bad_request` naming
//! the field, before anything is allocated or resampled; the server keeps
//! serving a healthy client in the same test.

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use pichat::engines::{Engines, SpeechToText};
use serde_json::json;
use server_support::*;

/// A WAV header with every field given, then `data` (the data chunk's
/// size says `data.len()`).
fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let align = channels.wrapping_mul(bits.div_ceil(8));
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&rate.wrapping_mul(align as u32).to_le_bytes());
    b.extend_from_slice(&align.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn stt_engines() -> Engines {
    Engines {
        stt: vec![Arc::new(CountingStt) as Arc<dyn SpeechToText>],
        llm: vec![],
        tts: vec![],
    }
}

/// The healthy client is served: a ping, a write and a read.
async fn healthy(c: &mut Client) {
    let r = c.request("ping", json!({})).await;
    assert_eq!(r["action"], "pong", "{r}");
    let r = c
        .request("create_conversation", json!({"title": "still here"}))
        .await;
    assert_eq!(r["action"], "conversation_created", "{r}");
    let r = c.request("get_conversations", json!({})).await;
    assert!(
        r["payload"]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["title"] == "still here"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_get_bad_request_naming_the_field_and_the_server_goes_on() {
    let srv = TestServer::start_with(
        stt_engines(),
        pichat::server::ServerOptions {
            stt_max: Duration::from_secs(2),
            ..options()
        },
    )
    .await;
    let mut attacker = srv.hello(&srv.token("mallory").await, "api").await;
    let mut alice = srv.hello(&srv.token("alice").await, "web").await;

    // 8 KB of 8-bit samples claiming 4,294,967,291 Hz (a consistent header:
    // its byte rate fits in 32 bits): once a 34 GB allocation.
    let big_rate = wav(1, 1, 4_294_967_291, 8, &[128; 8192]);
    assert!(big_rate.len() < 8300);
    // A 1 Hz header with 200,000 samples: once 3 GB of resampled audio.
    let one_hz = wav(1, 1, 1, 16, &vec![0; 400_000]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "4294967291 Hz",
            big_rate,
            "sample rate 4294967291 Hz is out of range",
        ),
        ("1 Hz", one_hz, "sample rate 1 Hz is out of range"),
        (
            "9 channels",
            wav(1, 9, 16_000, 16, &[0; 9 * 2 * 16]),
            "channels 9 is out of range",
        ),
        (
            "64-bit float",
            wav(3, 1, 16_000, 64, &[0; 8 * 16]),
            "sample format float 64-bit",
        ),
        (
            "compressed",
            wav(0x11, 1, 16_000, 4, &[0; 64]),
            "not a PCM WAV",
        ),
        (
            "2.5 s, over stt.max_seconds = 2",
            wav(1, 1, 16_000, 16, &vec![0; 16_000 * 5]),
            "duration 2.5 s is over the limit of 2 s (stt.max_seconds)",
        ),
    ];
    for (what, bytes, expect) in cases {
        let e = attacker
            .request("speech_to_text", json!({"audio_data": b64(&bytes)}))
            .await;
        assert_eq!(e["action"], "error", "{what}: {e}");
        assert_eq!(e["payload"]["code"], "bad_request", "{what}: {e}");
        let msg = e["payload"]["message"].as_str().unwrap();
        assert!(msg.starts_with("payload.audio_data: "), "{what}: {msg}");
        assert!(msg.contains(expect), "{what}: {msg}");
        healthy(&mut alice).await;
    }
    // At the limit: exactly 2 s is transcribed, and so are odd rates in range.
    for (rate, secs) in [(16_000u32, 2u32), (8_000, 1), (192_000, 1), (44_100, 1)] {
        let bytes = wav(1, 2, rate, 16, &vec![0; (rate * secs * 4) as usize]);
        let r = attacker
            .request("speech_to_text", json!({"audio_data": b64(&bytes)}))
            .await;
        assert_eq!(r["action"], "speech_to_text_result", "{rate} Hz: {r}");
        assert_eq!(
            r["payload"]["text"],
            format!("heard {} samples", 16_000 * secs),
            "{rate} Hz"
        );
    }
    // The attacker's own connection is still served too.
    healthy(&mut attacker).await;
    srv.stop().await;
}
