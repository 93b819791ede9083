//! The voice assistant: the turn state machine (`turn.rs`, pure), the
//! sentence splitter (`sentences.rs`, pure) and the I/O that drives them
//! (`daemon.rs`).

pub mod daemon;
pub mod sentences;
pub mod turn;
