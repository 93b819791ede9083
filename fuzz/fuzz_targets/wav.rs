//! Fuzz target: bytes as a WAV through the hostile-input decoder and the
//! resampler to 16 kHz (`pichat::audio::wav::decode::fuzz_check`): nothing
//! panics, nothing decoded is out of range, and the converted audio has
//! exactly the length its header's duration says.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pichat::audio::wav::decode::fuzz_check(data);
});
