// The PiChat WebSocket protocol (v2) for the browser: one socket, requests
// matched to replies by request_id, streamed replies, notifications as
// events, an application-level ping that notices a dead link, and reconnect
// with capped, jittered backoff. Nothing here touches the page.

const PROTOCOL = 2;
/// How long a request waits for its reply before failing.
const REQUEST_TIMEOUT_MS = 30000;
/// send_message, speech_to_text, text_to_speech: engines may be slow.
const JOB_TIMEOUT_MS = 180000;
const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];

/// A failed request: `code` is the protocol's error code.
export class RequestError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.code = code;
    Object.assign(this, extra);
  }
}

/// A UUIDv7 (time-ordered), made here so a retry can reuse it.
export function uuid7() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let t = Date.now();
  for (let i = 5; i >= 0; i--) { b[i] = t % 256; t = Math.floor(t / 256); }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function clientId() {
  let id = sessionStorage.getItem("pichat.client_id");
  if (!id) {
    id = `web-${uuid7()}`;
    sessionStorage.setItem("pichat.client_id", id);
  }
  return id;
}

/// Events: "state" ({state: "connecting"|"open"|"closed", retryIn?, reason?}),
/// "welcome" (the welcome payload), and one per notification action
/// ("new_message", "conversation_created", ...), detail = payload.
export class Client extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.next = 1;
    this.pending = new Map();
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.stopped = false;
    this.welcome = null;
    this.state = "closed";
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
  }

  /// Connects now (the "Retry now" button).
  retryNow() {
    if (this.state === "open") return;
    clearTimeout(this.retryTimer);
    this.open();
  }

  open() {
    clearTimeout(this.retryTimer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.closed(String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.hello();
    ws.onmessage = (ev) => this.frame(ev.data);
    ws.onclose = (ev) => {
      if (this.ws === ws) this.closed(ev.reason || `code ${ev.code}`, ev.code);
    };
  }

  async hello() {
    try {
      const w = await this.request("hello", {
        protocol: PROTOCOL,
        client_id: clientId(),
        client_kind: "web",
      }, { whileConnecting: true });
      this.welcome = w;
      this.attempt = 0;
      this.setState("open");
      this.emit("welcome", w);
      this.schedulePing();
    } catch (e) {
      if (this.ws) this.ws.close(4000, "hello failed");
    }
  }

  schedulePing() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(async () => {
      if (this.state !== "open") return;
      try {
        await this.request("ping", {}, { timeout: PONG_WITHIN_MS });
        this.schedulePing();
      } catch (e) {
        if (e.code === "timeout" && this.ws) this.ws.close(4001, "no pong");
      }
    }, PING_EVERY_MS);
  }

  closed(reason, code) {
    clearTimeout(this.pingTimer);
    this.ws = null;
    for (const [, p] of this.pending) {
      p.reject(new RequestError("unavailable", "the connection to the server was lost"));
      clearTimeout(p.timer);
    }
    this.pending.clear();
    if (this.stopped) {
      this.setState("closed", { reason, code });
      return;
    }
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const wait = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt++;
    this.setState("closed", { reason, code, retryIn: wait, attempt: this.attempt });
    this.retryTimer = setTimeout(() => this.open(), wait);
  }

  frame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (!f || typeof f.action !== "string") return;
    const payload = f.payload || {};
    if (f.request_id != null) {
      const p = this.pending.get(f.request_id);
      if (p) p.onFrame(f.action, payload);
      return;
    }
    this.emit(f.action, payload);
  }

  /// Sends a request; resolves with the reply's payload (or, with
  /// `opts.stream`, calls it for every frame and resolves when it says so).
  request(action, payload = {}, opts = {}) {
    return new Promise((resolve, reject) => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN || (this.state !== "open" && !opts.whileConnecting)) {
        reject(new RequestError("unavailable", "not connected to the server"));
        return;
      }
      const id = `r${this.next++}`;
      const timeout = opts.timeout || REQUEST_TIMEOUT_MS;
      const p = {
        timer: null,
        reject: (e) => { this.pending.delete(id); clearTimeout(p.timer); reject(e); },
        resolve: (v) => { this.pending.delete(id); clearTimeout(p.timer); resolve(v); },
        arm: () => {
          clearTimeout(p.timer);
          p.timer = setTimeout(() => p.reject(new RequestError("timeout", `${action}: no answer from the server`)), timeout);
        },
        onFrame: (act, pl) => {
          p.arm();
          if (opts.stream) {
            const r = opts.stream(act, pl);
            if (r && r.done) {
              if (r.error) p.reject(r.error); else p.resolve(r.value);
            }
            return;
          }
          if (act === "error") p.reject(new RequestError(pl.code, pl.message, pl));
          else p.resolve(pl);
        },
      };
      this.pending.set(id, p);
      p.arm();
      ws.send(JSON.stringify({ action, request_id: id, payload }));
    });
  }

  /// `send_message`: calls `on(action, payload)` for message_sent,
  /// typing_indicator and every message_stream; resolves with the stored
  /// assistant message (or null when the reply failed with an error after
  /// the question was stored; the error is passed to `on` as "error").
  sendMessage(payload, on) {
    let typing = false;
    let final = null;
    return this.request("send_message", payload, {
      timeout: JOB_TIMEOUT_MS,
      stream: (act, pl) => {
        if (act === "error") {
          on("error", pl);
          // Before typing on, nothing else comes; after it, typing off ends it.
          return typing ? null : { done: true, error: new RequestError(pl.code, pl.message, pl) };
        }
        on(act, pl);
        if (act === "typing_indicator") {
          if (pl.is_typing) typing = true;
          else return { done: true, value: final };
        }
        if (act === "message_stream" && pl.finished) {
          final = pl.message || null;
          // A retry answered from the store has no typing frames.
          if (!typing) return { done: true, value: final };
        }
        return null;
      },
    });
  }
}
