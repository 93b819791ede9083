//! The size and count limits of the protocol, in one place for the server
//! (which enforces them) and for clients (which can check before sending).

/// Largest frame, in bytes, for every action but `speech_to_text`.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest `speech_to_text` frame, in bytes (base64 WAV inside).
pub const MAX_STT_FRAME: usize = 8 << 20;
/// Room an `append_messages` frame needs besides its messages (action,
/// request id of at most [`MAX_REQUEST_ID_CHARS`] escaped characters,
/// brackets), so that a batch of messages within `MAX_FRAME - APPEND_ENVELOPE`
/// is a frame within [`MAX_FRAME`].
pub const APPEND_ENVELOPE: usize = 1024;
/// Most bytes of records in one page (`sync_batch`, `messages_list`,
/// `search_results`): the server stops adding records there and says
/// `has_more` (a single record larger than this still goes, alone).
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// Largest frame a client must take from the server: a page (at most
/// [`MAX_PAGE_BYTES`] and one record), or a `text_to_speech_result` (at most
/// 8 MiB of WAV, as base64).
pub const MAX_SERVER_FRAME: usize = 16 << 20;

// A client takes any page plus its largest record (32,000 characters
// escaped to 6 bytes each, and its other fields), and the largest speech
// result (8 MiB of WAV as base64, and the envelope).
const _: () = assert!(MAX_SERVER_FRAME > MAX_PAGE_BYTES + 6 * MAX_CONTENT_CHARS + (64 << 10));
const _: () = assert!(MAX_SERVER_FRAME > (8 << 20) * 4 / 3 + (1 << 10));
/// Message content, in characters (Unicode scalar values).
pub const MAX_CONTENT_CHARS: usize = 32_000;
/// Conversation title, in characters, after trimming.
pub const MAX_TITLE_CHARS: usize = 200;
/// `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// `client_id` of `hello`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;
/// Model ids (`model_id`, `selected_model`), in characters.
pub const MAX_MODEL_CHARS: usize = 200;
/// `voice_settings.gender` and `.accent`, in characters.
pub const MAX_VOICE_FIELD_CHARS: usize = 64;
/// `voice_settings.speed` range.
pub const VOICE_SPEED: (f64, f64) = (0.25, 4.0);
/// `assistant_personality` (a system prompt), in characters.
pub const MAX_PERSONALITY_CHARS: usize = 8_000;
/// `text_to_speech` text, in characters.
pub const MAX_TTS_CHARS: usize = 4_000;
/// `search` query, in characters.
pub const MAX_QUERY_CHARS: usize = 500;
/// Messages in one `append_messages`.
pub const MAX_APPEND: usize = 500;
/// `sync` page size: default and largest.
pub const SYNC_DEFAULT_LIMIT: u32 = 500;
pub const SYNC_MAX_LIMIT: u32 = 5_000;
/// `get_conversations` page size: default and largest.
pub const CONVERSATIONS_DEFAULT_LIMIT: u32 = 50;
pub const CONVERSATIONS_MAX_LIMIT: u32 = 500;
/// `get_messages` page size: default and largest.
pub const MESSAGES_DEFAULT_LIMIT: u32 = 100;
pub const MESSAGES_MAX_LIMIT: u32 = 1_000;
/// `search` hits: default and most.
pub const SEARCH_DEFAULT_LIMIT: u32 = 20;
pub const SEARCH_MAX_LIMIT: u32 = 100;

/// The bytes of a page's records, counted against [`MAX_PAGE_BYTES`] as
/// the server fills it.
#[derive(Debug, Clone)]
pub struct PageBudget {
    used: usize,
    max: usize,
}

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget::new(MAX_PAGE_BYTES)
    }
}

impl PageBudget {
    pub fn new(max: usize) -> PageBudget {
        PageBudget { used: 0, max }
    }

    /// Counts `record`'s encoded size (and the comma before it); false when
    /// the page is then past the limit (a page's first record goes anyway,
    /// and counts).
    pub fn fits<T: serde::Serialize>(&mut self, record: &T) -> bool {
        self.used += encoded_len(record) + 1;
        self.used <= self.max
    }

    /// The bytes counted so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// The length of `value` as JSON, without building the text.
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// A client's limit, with the default when absent and clamped to `1..=max`
/// (asking for more than the maximum is not an error: `has_more` says
/// there is more).
pub fn page(limit: Option<u32>, default: u32, max: u32) -> u32 {
    limit.unwrap_or(default).clamp(1, max)
}

/// Checks a text's length in characters; `what` names the field in the error.
pub fn check_len(what: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(format!(
            "{what} must have {min} to {max} characters (got {n})"
        ));
    }
    Ok(())
}
