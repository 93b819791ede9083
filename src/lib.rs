//! pichat: a hands-free voice assistant for the Raspberry Pi, and the chat
//! server it talks to. See ARCHITECTURE.md for the map.

pub mod audio;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dl;
pub mod engines;
pub mod history;
pub mod logging;
pub mod memory;
pub mod protocol;
pub mod ptt;
pub mod server;
pub mod serverdb;
pub mod service;
pub mod signals;
pub mod store;
pub mod supervisor;
pub mod sync;
pub mod time;
pub mod voice;
pub mod wake;
