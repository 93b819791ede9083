//! The voice assistant: the turn state machine (`turn.rs`, pure), the
//! sentence splitter (`sentences.rs`, pure), the ear that owns the
//! microphone (`ear.rs`: wake words, voice activity, the question's audio),
//! the I/O that drives them (`daemon.rs`) and the `pichat run` lifecycle
//! (`service.rs`: reload, re-arming, sync restart).

pub mod daemon;
pub mod ear;
pub mod sentences;
pub mod service;
pub mod turn;
