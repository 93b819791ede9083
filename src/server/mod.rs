//! The chat server (placeholder).
