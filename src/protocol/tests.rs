//! Unit tests of the protocol types: round trips both ways, the errors of
//! malformed frames, limits.

use serde_json::json;
use uuid::Uuid;

use super::*;

fn decode(v: serde_json::Value) -> Result<ClientFrame, DecodeError> {
    ClientFrame::decode(&v.to_string())
}

#[test]
fn requests_round_trip() {
    let id = Uuid::now_v7();
    let frames = vec![
        Request::Hello(Hello {
            protocol: 2,
            client_id: "pi-kitchen".into(),
            client_kind: ClientKind::Voice,
            last_rev: Some(7),
        }),
        Request::GetConversations(GetConversations::default()),
        Request::CreateConversation(CreateConversation {
            id: Some(id),
            title: Some("Hi".into()),
            model_id: None,
        }),
        Request::UpdateConversation(UpdateConversation {
            id,
            title: None,
            archived: Some(true),
            model_id: Some(None),
        }),
        Request::SendMessage(SendMessage {
            id: None,
            conversation_id: id,
            content: "hello".into(),
            is_audio: true,
        }),
        Request::Sync(SyncRequest {
            since: 3,
            limit: Some(10),
        }),
        Request::UpdateSettings(UpdateSettings {
            selected_model: Some(Some("m".into())),
            voice_settings: Some(VoiceSettingsUpdate {
                speed: Some(None),
                ..Default::default()
            }),
            assistant_personality: None,
        }),
        Request::Ping(Empty {}),
    ];
    for body in frames {
        let f = Frame::new(Some("r-1".into()), body);
        let text = f.encode();
        assert_eq!(ClientFrame::decode(&text).unwrap(), f, "{text}");
    }
}

#[test]
fn replies_round_trip() {
    let m = Message {
        id: Uuid::now_v7(),
        conversation_id: Uuid::now_v7(),
        role: Role::Assistant,
        content: "Paris.".into(),
        created_at: 1_795_000_502_123,
        model_id: Some("smollm2".into()),
        tokens_used: Some(3),
        response_time_ms: None,
        is_audio: false,
        origin: Origin::Api,
        reply_to: Some(Uuid::now_v7()),
        rev: 9,
    };
    let batch = Reply::SyncBatch(SyncBatch {
        changes: vec![
            Change {
                rev: 9,
                op: Op::Upsert,
                record: ChangeRecord::Message(m.clone()),
            },
            Change {
                rev: 10,
                op: Op::Upsert,
                record: ChangeRecord::Settings(Settings::default()),
            },
        ],
        rev: 10,
        has_more: false,
    });
    let f = Frame::new(None, batch);
    let text = f.encode();
    assert!(text.contains(r#""entity":"message""#), "{text}");
    assert!(
        text.contains(r#""created_at":"2026-11-18T11:15:02.123Z""#),
        "{text}"
    );
    assert!(!text.contains("request_id"), "{text}");
    assert_eq!(ServerFrame::decode(&text).unwrap(), f);

    let e = ServerFrame::error(
        Some("x".into()),
        ErrorPayload {
            retry_after_ms: Some(1500),
            ..ErrorPayload::new(ErrorCode::RateLimited, "slow down").for_action("send_message")
        },
    );
    let v: serde_json::Value = serde_json::from_str(&e.encode()).unwrap();
    assert_eq!(
        v,
        json!({"action":"error","request_id":"x","payload":{"code":"rate_limited","message":"slow down","action":"send_message","retry_after_ms":1500}})
    );
}

#[test]
fn missing_payload_is_empty_and_unknown_fields_are_ignored() {
    let f = decode(json!({"action": "ping"})).unwrap();
    assert_eq!(f.body, Request::Ping(Empty {}));
    let f = decode(json!({"action": "get_settings", "payload": null, "extra": 1})).unwrap();
    assert_eq!(f.body, Request::GetSettings(Empty {}));
    let f = decode(json!({"action": "sync", "payload": {"since": 0, "bogus": [1]}})).unwrap();
    assert_eq!(
        f.body,
        Request::Sync(SyncRequest {
            since: 0,
            limit: None
        })
    );
}

#[test]
fn malformed_frames_have_precise_errors() {
    // Not JSON: closes with 1007.
    let e = ClientFrame::decode("{nope").unwrap_err();
    assert_eq!(
        (e.code, e.close),
        (ErrorCode::BadRequest, Some(close::INVALID_PAYLOAD))
    );
    // JSON but not an object: an error, the connection stays.
    let e = ClientFrame::decode("[1,2]").unwrap_err();
    assert_eq!((e.code, e.close), (ErrorCode::BadRequest, None));
    // No action.
    let e = decode(json!({"request_id": "a"})).unwrap_err();
    assert_eq!(e.request_id.as_deref(), Some("a"));
    assert!(e.message.contains("no action"), "{}", e.message);
    // Wrong types name the field.
    let e = decode(json!({"action": "sync", "request_id": "b", "payload": {"since": "x"}}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        (e.action.as_deref(), e.request_id.as_deref()),
        (Some("sync"), Some("b"))
    );
    assert!(
        e.message.starts_with("payload.since: invalid type"),
        "{}",
        e.message
    );
    let e = decode(
        json!({"action": "append_messages", "payload": {"messages": [
            {"id": Uuid::now_v7(), "conversation_id": Uuid::now_v7(), "role": "user", "content": 5}
        ]}}),
    )
    .unwrap_err();
    assert!(
        e.message.starts_with("payload.messages[0].content"),
        "{}",
        e.message
    );
    let e =
        decode(json!({"action": "get_conversation", "payload": {"id": "not-a-uuid"}})).unwrap_err();
    assert!(e.message.starts_with("payload.id"), "{}", e.message);
    // Unknown action.
    let e = decode(json!({"action": "fly", "request_id": "c"})).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownAction);
    assert_eq!(e.request_id.as_deref(), Some("c"));
    // Server actions are not client actions.
    assert_eq!(
        decode(json!({"action": "welcome"})).unwrap_err().code,
        ErrorCode::UnknownAction
    );
    // request_id must be a short string.
    assert!(decode(json!({"action": "ping", "request_id": 5})).is_err());
    let e = decode(json!({"action": "ping", "request_id": "x".repeat(65)})).unwrap_err();
    assert_eq!((e.code, e.request_id), (ErrorCode::BadRequest, None));
    // payload must be an object.
    let e = decode(json!({"action": "ping", "payload": [1]})).unwrap_err();
    assert!(e.message.contains("payload must be"), "{}", e.message);
}

#[test]
fn limits_are_checked() {
    let c = Uuid::now_v7();
    let long = "é".repeat(limits::MAX_CONTENT_CHARS + 1);
    let e = decode(
        json!({"action": "send_message", "payload": {"conversation_id": c, "content": long}}),
    )
    .unwrap_err();
    assert!(e.message.contains("32000"), "{}", e.message);
    let ok = "é".repeat(limits::MAX_CONTENT_CHARS);
    assert!(
        decode(json!({"action": "send_message", "payload": {"conversation_id": c, "content": ok}}))
            .is_ok()
    );
    for bad in ["", "   "] {
        assert!(
            decode(
                json!({"action": "send_message", "payload": {"conversation_id": c, "content": bad}})
            )
            .is_err()
        );
    }
    assert!(
        decode(json!({"action": "create_conversation", "payload": {"title": "t".repeat(201)}}))
            .is_err()
    );
    assert!(decode(json!({"action": "sync", "payload": {"since": -1}})).is_err());
    assert!(decode(json!({"action": "hello", "payload": {"protocol": 1, "client_id": "a", "client_kind": "web"}})).is_err());
    assert!(decode(json!({"action": "hello", "payload": {"protocol": 2, "client_id": "a", "client_kind": "fax"}})).is_err());
    assert!(decode(json!({"action": "append_messages", "payload": {"messages": []}})).is_err());
    assert!(
        decode(json!({"action": "update_settings", "payload": {"voice_settings": {"speed": 9.0}}}))
            .is_err()
    );
    assert_eq!(limits::page(None, 500, 5000), 500);
    assert_eq!(limits::page(Some(0), 500, 5000), 1);
    assert_eq!(limits::page(Some(9999), 500, 5000), 5000);
}

#[test]
fn frame_size_limits() {
    let pad = "x".repeat(limits::MAX_FRAME);
    let e = decode(json!({"action": "ping", "request_id": "big", "payload": {"pad": pad}}))
        .unwrap_err();
    assert_eq!(
        (e.code, e.close, e.request_id.as_deref()),
        (ErrorCode::TooLarge, Some(close::TOO_BIG), Some("big"))
    );
    // speech_to_text may be up to 8 MiB.
    let f = decode(json!({"action": "speech_to_text", "payload": {"audio_data": pad}})).unwrap();
    assert_eq!(f.body.action(), "speech_to_text");
    let huge = "x".repeat(limits::MAX_STT_FRAME);
    let e =
        decode(json!({"action": "speech_to_text", "payload": {"audio_data": huge}})).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
}

#[test]
fn nullable_fields_tell_absent_from_null() {
    let id = Uuid::now_v7();
    let f = decode(json!({"action": "update_conversation", "payload": {"id": id}})).unwrap();
    let Request::UpdateConversation(u) = f.body else {
        panic!()
    };
    assert_eq!(u.model_id, None);
    let f =
        decode(json!({"action": "update_conversation", "payload": {"id": id, "model_id": null}}))
            .unwrap();
    let Request::UpdateConversation(u) = f.body else {
        panic!()
    };
    assert_eq!(u.model_id, Some(None));
}

#[test]
fn deep_nesting_is_an_error_or_ignored_never_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = ClientFrame::decode(&deep).unwrap_err();
    assert_eq!((e.code, e.close), (ErrorCode::BadRequest, None));
    // Under an unknown field it is skipped.
    let f =
        ClientFrame::decode(&format!(r#"{{"action":"ping","payload":{{"x":{deep}}}}}"#)).unwrap();
    assert_eq!(f.body, Request::Ping(Empty {}));
    // Where a value is expected, it is a bad request.
    let e = ClientFrame::decode(&format!(
        r#"{{"action":"sync","payload":{{"since":{deep}}}}}"#
    ))
    .unwrap_err();
    assert_eq!((e.code, e.close), (ErrorCode::BadRequest, None));
}

#[test]
fn only_objects_are_frames() {
    for text in [r#"["ping"]"#, r#""ping""#, "1", "null", "  [1]"] {
        let e = ClientFrame::decode(text).unwrap_err();
        assert_eq!((e.code, e.close), (ErrorCode::BadRequest, None), "{text}");
    }
    for text in ["", "   ", "{", "nul", r#"{"action":"ping"} trailing"#] {
        let e = ClientFrame::decode(text).unwrap_err();
        assert_eq!(e.close, Some(close::INVALID_PAYLOAD), "{text:?}");
    }
}

fn input(content: String) -> MessageInput {
    MessageInput {
        id: Uuid::now_v7(),
        conversation_id: Uuid::now_v7(),
        role: crate::history::Role::User,
        content,
        created_at: Some(1),
        model_id: None,
        tokens_used: None,
        response_time_ms: None,
        is_audio: false,
        origin: None,
        reply_to: None,
    }
}

#[test]
fn uploads_are_cut_into_frames_the_server_takes() {
    // 600 messages of 3 KB: 1.8 MB, cut into frames of at most MAX_FRAME.
    let msgs: Vec<MessageInput> = (0..600).map(|_| input("x".repeat(3000))).collect();
    let batches = AppendMessages::batches(&msgs);
    let mut next = 0;
    for b in &batches {
        let AppendBatch::Send(r) = b else {
            panic!("{b:?}")
        };
        assert_eq!(r.start, next, "in order, none left out");
        next = r.end;
        let frame = ClientFrame::new(
            Some("x".repeat(limits::MAX_REQUEST_ID_CHARS)),
            Request::AppendMessages(AppendMessages {
                messages: msgs[r.clone()].to_vec(),
            }),
        )
        .encode();
        assert!(frame.len() <= limits::MAX_FRAME, "{}", frame.len());
        // The server decodes it: not too large.
        ClientFrame::decode(&frame).unwrap();
    }
    assert_eq!(next, 600);
    assert!(batches.len() >= 2);
    // Small messages: at most MAX_APPEND a frame.
    let small: Vec<MessageInput> = (0..1001).map(|i| input(format!("{i}"))).collect();
    let b = AppendMessages::batches(&small);
    assert_eq!(
        b,
        vec![
            AppendBatch::Send(0..500),
            AppendBatch::Send(500..1000),
            AppendBatch::Send(1000..1001)
        ]
    );
    // A message no frame can hold is set apart, the others still go.
    // 200,000 control characters: 6 bytes each, escaped.
    let odd = vec![
        input("a".into()),
        input("\u{1}".repeat(200_000)),
        input("b".into()),
    ];
    assert_eq!(
        AppendMessages::batches(&odd),
        vec![
            AppendBatch::Send(0..1),
            AppendBatch::TooLarge(1),
            AppendBatch::Send(2..3)
        ]
    );
    // The worst message within the limits fits: 32,000 escaped characters.
    let worst = vec![input("\u{1}".repeat(limits::MAX_CONTENT_CHARS))];
    assert_eq!(
        AppendMessages::batches(&worst),
        vec![AppendBatch::Send(0..1)]
    );
}

#[test]
fn a_page_budget_counts_encoded_bytes_and_the_first_record_always_goes() {
    let mut b = limits::PageBudget::new(100);
    assert!(b.fits(&"x".repeat(50)));
    assert_eq!(b.used(), 53, "quotes and the comma");
    assert!(!b.fits(&"y".repeat(50)));
    let mut b = limits::PageBudget::new(10);
    assert!(
        !b.fits(&"z".repeat(50)),
        "over alone: the caller still sends it"
    );
    assert_eq!(limits::encoded_len(&"\u{1}"), 8);
}
