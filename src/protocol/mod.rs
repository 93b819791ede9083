//! The PiChat WebSocket protocol (v2): the only module that knows the wire
//! format. The server (`crate::server`) and the daemon's sync client both
//! use these types; every type serializes and deserializes, so either side
//! can encode what it sends and decode what it receives.
//!
//! - [`ClientFrame`] / [`Request`]: client → server, `{action, request_id?, payload}`.
//! - [`ServerFrame`] / [`Reply`]: server → client, replies and notifications.
//! - [`records`]: conversation, message, settings, sync change.
//! - [`limits`]: frame sizes, text lengths, page sizes.
//! - [`ErrorCode`], [`ErrorPayload`], [`DecodeError`].
//!
//! Decoding is strict about types and lenient about extras: unknown fields
//! are ignored, a wrong type or a missing field is `bad_request` naming the
//! field (`payload.messages[2].content: invalid type...`), an unknown action
//! is `unknown_action`. A frame that is not JSON at all, or is over its size
//! limit, is an error after which the connection is closed
//! ([`DecodeError::close`]). Everything PROTOCOL.md leaves open is decided in
//! `PROTOCOL-NOTES.md` at the repository root.

mod error;
pub mod limits;
pub mod records;
pub mod replies;
pub mod requests;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use error::{DecodeError, ErrorCode, ErrorPayload};
pub use records::*;
pub use replies::*;
pub use requests::*;

/// The protocol version `hello` must name.
pub const PROTOCOL_VERSION: u32 = 2;

/// WebSocket close codes the server uses.
pub mod close {
    /// Server shutting down, or the peer was silent too long.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation (RFC 6455: unmasked or malformed frames).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame (the protocol is JSON text frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not UTF-8, or not JSON.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy: the token was revoked, or a frame took too long to arrive.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The client reads too slowly (its send queue filled up), or the server
    /// is busy receiving other large frames; reconnect (and `sync`).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Feature names `welcome` may list.
pub mod features {
    /// `sync`, tombstones and notifications.
    pub const SYNC: &str = "sync";
    /// `append_messages`.
    pub const APPEND: &str = "append_messages";
    /// `search`.
    pub const SEARCH: &str = "search";
    /// `get_settings` / `update_settings`.
    pub const SETTINGS: &str = "settings";
    /// `send_message` answers with an LLM (an engine is configured).
    pub const AI_REPLIES: &str = "ai_replies";
    /// `text_to_speech` (an engine is configured).
    pub const TEXT_TO_SPEECH: &str = "text_to_speech";
    /// `speech_to_text` (an engine is configured).
    pub const SPEECH_TO_TEXT: &str = "speech_to_text";
}

/// Largest frame for a client action, in bytes.
pub fn frame_limit(action: &str) -> usize {
    if action == "speech_to_text" {
        limits::MAX_STT_FRAME
    } else {
        limits::MAX_FRAME
    }
}

/// The body of a frame, by action: [`Request`] or [`Reply`].
pub trait Body: Sized {
    /// Every action of this direction.
    const ACTIONS: &'static [&'static str];
    fn action(&self) -> &'static str;
    /// Decodes and checks the payload of `action`; `None` for an unknown action.
    fn decode_payload(action: &str, payload: &str) -> Option<Result<Self, String>>;
    #[doc(hidden)]
    fn serialize_payload<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// Decodes one payload: the types, then [`Payload::validate`].
fn payload_from<T: Payload>(json: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("payload: {inner}")
        } else {
            format!("payload.{path}: {inner}")
        }
    })?;
    value.validate()?;
    Ok(value)
}

macro_rules! frames {
    ($(#[$meta:meta])* pub enum $name:ident {
        $( $(#[$vmeta:meta])* $action:literal => $variant:ident($ty:ty), )*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($ty), )*
        }

        impl $name {
            /// The `action` of this frame.
            pub fn action(&self) -> &'static str {
                match self {
                    $( $name::$variant(_) => $action, )*
                }
            }
        }

        impl Body for $name {
            const ACTIONS: &'static [&'static str] = &[$($action),*];

            fn action(&self) -> &'static str {
                $name::action(self)
            }

            fn decode_payload(action: &str, payload: &str) -> Option<Result<Self, String>> {
                match action {
                    $( $action => Some(payload_from::<$ty>(payload).map($name::$variant)), )*
                    _ => None,
                }
            }

            fn serialize_payload<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                match self {
                    $( $name::$variant(p) => map.serialize_entry("payload", p), )*
                }
            }
        }
    };
}

frames! {
    /// What a client asks.
    pub enum Request {
        "hello" => Hello(Hello),
        "get_conversations" => GetConversations(GetConversations),
        "create_conversation" => CreateConversation(CreateConversation),
        "get_conversation" => GetConversation(ById),
        "update_conversation" => UpdateConversation(UpdateConversation),
        "delete_conversation" => DeleteConversation(ById),
        "get_messages" => GetMessages(GetMessages),
        "search" => Search(Search),
        "send_message" => SendMessage(SendMessage),
        "append_messages" => AppendMessages(AppendMessages),
        "sync" => Sync(SyncRequest),
        "get_settings" => GetSettings(Empty),
        "update_settings" => UpdateSettings(UpdateSettings),
        "text_to_speech" => TextToSpeech(TextToSpeech),
        "speech_to_text" => SpeechToText(SpeechToText),
        "ping" => Ping(Empty),
    }
}

frames! {
    /// What the server sends: replies (with the request's `request_id`) and
    /// notifications of changes made on the user's other connections
    /// (`conversation_created`, `conversation_updated`, `conversation_deleted`,
    /// `new_message`, `settings_updated`, without `request_id`).
    pub enum Reply {
        "welcome" => Welcome(Welcome),
        "conversations_list" => ConversationsList(ConversationsList),
        "conversation_created" => ConversationCreated(ConversationPayload),
        "conversation" => Conversation(ConversationPayload),
        "conversation_updated" => ConversationUpdated(ConversationPayload),
        "conversation_deleted" => ConversationDeleted(ConversationDeleted),
        "messages_list" => MessagesList(MessagesList),
        "search_results" => SearchResults(SearchResults),
        "message_sent" => MessageSent(MessagePayload),
        "typing_indicator" => TypingIndicator(TypingIndicator),
        "message_stream" => MessageStream(MessageStream),
        "messages_appended" => MessagesAppended(MessagesAppended),
        "sync_batch" => SyncBatch(SyncBatch),
        "settings" => Settings(SettingsPayload),
        "settings_updated" => SettingsUpdated(SettingsPayload),
        "text_to_speech_result" => TextToSpeechResult(TextToSpeechResult),
        "speech_to_text_result" => SpeechToTextResult(SpeechToTextResult),
        "pong" => Pong(Pong),
        "new_message" => NewMessage(MessagePayload),
        "error" => Error(ErrorPayload),
    }
}

/// A frame: an action's body and the request id it answers or carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<B> {
    pub request_id: Option<String>,
    pub body: B,
}

/// Client → server.
pub type ClientFrame = Frame<Request>;
/// Server → client.
pub type ServerFrame = Frame<Reply>;

impl<B: Body> Serialize for Frame<B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("action", self.body.action())?;
        if let Some(id) = &self.request_id {
            map.serialize_entry("request_id", id)?;
        }
        self.body.serialize_payload(&mut map)?;
        map.end()
    }
}

impl<B: Body> Frame<B> {
    pub fn new(request_id: Option<String>, body: B) -> Self {
        Frame { request_id, body }
    }

    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: string keys, no maps with
        // non-string keys, finite numbers checked on input.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"action":"error","payload":{{"code":"internal","message":"cannot encode a reply: {e}"}}}}"#
            )
        })
    }
}

impl ClientFrame {
    /// Decodes a client frame, enforcing the size limits of the protocol.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        decode_frame(text, true)
    }
}

impl ServerFrame {
    /// Decodes a server frame (no size limit: the client chooses its own).
    pub fn decode(text: &str) -> Result<ServerFrame, DecodeError> {
        decode_frame(text, false)
    }

    /// An `error` reply.
    pub fn error(request_id: Option<String>, e: ErrorPayload) -> ServerFrame {
        Frame::new(request_id, Reply::Error(e))
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    action: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn too_large(len: usize, limit: usize) -> DecodeError {
    DecodeError {
        code: ErrorCode::TooLarge,
        message: format!("the frame has {len} bytes; the limit is {limit}"),
        action: None,
        request_id: None,
        close: Some(close::TOO_BIG),
    }
}

fn decode_frame<B: Body>(text: &str, limits: bool) -> Result<Frame<B>, DecodeError> {
    if limits && text.len() > limits::MAX_STT_FRAME {
        return Err(too_large(text.len(), limits::MAX_STT_FRAME));
    }
    let not_json = |e: serde_json::Error| DecodeError {
        close: Some(close::INVALID_PAYLOAD),
        ..DecodeError::bad(format!("the frame is not JSON ({e})"))
    };
    // serde would read an array as a struct, field by field: only an object is a frame.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => DecodeError::bad(
                "a frame must be a JSON object {\"action\", \"request_id\"?, \"payload\"}",
            ),
            Err(e) => not_json(e),
        });
    }
    let env: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => DecodeError::bad(format!(
                "a frame must be a JSON object {{\"action\", \"request_id\"?, \"payload\"}} ({e})"
            )),
            _ => not_json(e),
        }
    })?;
    let request_id = match env.request_id {
        None => None,
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(id) if id.chars().count() <= limits::MAX_REQUEST_ID_CHARS => Some(id),
            Ok(id) => {
                return Err(DecodeError::bad(format!(
                    "request_id must have at most {} characters (got {})",
                    limits::MAX_REQUEST_ID_CHARS,
                    id.chars().count()
                )));
            }
            Err(_) => return Err(DecodeError::bad("request_id must be a string")),
        },
    };
    let with_id = |e: DecodeError| DecodeError {
        request_id: request_id.clone(),
        ..e
    };
    let action = match env
        .action
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        Some(Ok(a)) => a,
        Some(Err(_)) => return Err(with_id(DecodeError::bad("action must be a string"))),
        None => return Err(with_id(DecodeError::bad("the frame has no action"))),
    };
    // Echoed in errors; a huge bogus action is not sent back whole.
    let echoed: String = action.chars().take(limits::MAX_REQUEST_ID_CHARS).collect();
    let with_action = |e: DecodeError| DecodeError {
        action: Some(echoed.clone()),
        ..with_id(e)
    };
    if limits && text.len() > frame_limit(&action) {
        return Err(with_action(too_large(text.len(), frame_limit(&action))));
    }
    let payload = match env.payload {
        None => "{}",
        Some(raw) if raw.get().starts_with('{') => raw.get(),
        Some(_) => {
            return Err(with_action(DecodeError::bad(
                "payload must be a JSON object",
            )));
        }
    };
    match B::decode_payload(&action, payload) {
        Some(Ok(body)) => Ok(Frame { request_id, body }),
        Some(Err(message)) => Err(with_action(DecodeError::bad(message))),
        None => Err(with_action(DecodeError {
            code: ErrorCode::UnknownAction,
            message: format!(
                "unknown action \"{echoed}\" (known: {})",
                B::ACTIONS.join(", ")
            ),
            ..DecodeError::bad("")
        })),
    }
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`, or `"stopping"` during shutdown.
    pub status: String,
    pub version: String,
    pub uptime_s: u64,
    pub connections: usize,
    /// The server's database.
    pub store: StoreState,
}

/// The state of the server's database in `GET /health` (no path, URL or
/// error text: `/health` is open; the server's log has the details).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreState {
    /// `"sqlite"` or `"postgres"`.
    pub kind: String,
    /// It answered just now (within a second).
    pub ok: bool,
    /// Bytes on disk (SQLite: the file and its WAL; PostgreSQL: pichat's
    /// tables and indexes).
    pub bytes: u64,
    /// SQLite: free pages; PostgreSQL: dead rows, estimated (bloat).
    pub reclaimable_bytes: u64,
    /// SQLite: the `-wal` file.
    pub wal_bytes: u64,
    /// PostgreSQL: this server's pool, connections open and idle.
    pub pool_size: usize,
    pub pool_idle: usize,
    /// The last maintenance pass of this server, if any.
    #[serde(default, with = "crate::time::rfc3339_opt")]
    pub last_maintenance: Option<i64>,
}

/// The JSON body of an HTTP error (401 before the upgrade, 404, 503...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpError {
    pub error: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests;
