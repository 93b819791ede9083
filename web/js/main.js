// The pichat web app: conversations, messages with streamed AI replies,
// live updates from the user's other devices, search, export, settings,
// speech in and out. Talks only the WebSocket protocol (js/client.js); the
// session cookie set at sign-in authenticates the socket.

import { Client, RequestError, uuid7 } from "./client.js";
import { VList } from "./vlist.js";
import * as audio from "./audio.js";

const $ = (id) => document.getElementById(id);
const PAGE_CONVERSATIONS = 50;
const PAGE_MESSAGES = 100;
const JUMP_PAGE = 1000;

const state = {
  convs: new Map(),
  order: [],
  hasMore: false,
  loadingList: false,
  archived: false,
  open: null, // the open conversation's id
  olderMore: false,
  loadingOlder: false,
  features: [],
  models: [],
  settings: null,
  typing: false,
  searchSeq: 0,
  connectedOnce: false,
};

// ---------- small helpers ----------

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const yearFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return timeFmt.format(d);
  if (d.getFullYear() === now.getFullYear()) return `${dayFmt.format(d)} ${timeFmt.format(d)}`;
  return yearFmt.format(d);
}

function activity(c) {
  return c.last_message_at || c.created_at;
}

function plural(n, one, many) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

let toastTimer = 0;
function toast(text, kind = "info") {
  const s = $("status");
  if (s.dataset.conn === "down") return;
  $("status-text").textContent = text;
  $("status-retry").hidden = true;
  s.className = `status ${kind}`;
  s.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { if (s.dataset.conn !== "down") s.hidden = true; }, 5000);
}

function explain(e) {
  if (e instanceof RequestError) {
    if (e.code === "rate_limited" && e.retry_after_ms) {
      return `${e.message} (again in ${Math.ceil(e.retry_after_ms / 1000)} s)`;
    }
    return e.message;
  }
  return String(e && e.message ? e.message : e);
}

// ---------- connection ----------

function wsUrl() {
  const meta = document.querySelector('meta[name="pichat-ws"]')?.content || "/ws";
  const u = new URL(meta, location.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

const client = new Client(wsUrl());

/// After a failed connection: is the session over (sign in again) or is
/// the server unreachable?
async function sessionGone() {
  try {
    const r = await fetch("/api/session", { cache: "no-store", credentials: "same-origin" });
    return r.status === 401;
  } catch {
    return false;
  }
}

client.addEventListener("state", async (ev) => {
  const { state: st, retryIn, attempt } = ev.detail;
  const s = $("status");
  const dot = $("conn-dot");
  dot.className = `dot ${st}`;
  dot.title = st === "open" ? "Connected" : st === "connecting" ? "Connecting…" : "Not connected";
  document.body.classList.toggle("offline", st !== "open");
  if (st === "open") {
    s.dataset.conn = "up";
    if (state.connectedOnce) toast("Connected again.", "ok");
    else s.hidden = true;
    state.connectedOnce = true;
    return;
  }
  if (st === "closed" && retryIn !== undefined) {
    if (attempt === 1 || attempt % 3 === 0) {
      if (await sessionGone()) {
        client.stop();
        location.assign(`/signin?expired=1&next=${encodeURIComponent(location.pathname + location.hash)}`);
        return;
      }
    }
    s.dataset.conn = "down";
    s.className = "status error";
    $("status-text").textContent = `The server cannot be reached. Trying again in ${Math.max(1, Math.round(retryIn / 1000))} s…`;
    $("status-retry").hidden = false;
    s.hidden = false;
  }
});

client.addEventListener("welcome", async (ev) => {
  state.features = ev.detail.features || [];
  state.models = ev.detail.models || [];
  document.body.classList.toggle("no-ai", !state.features.includes("ai_replies"));
  document.body.classList.toggle("no-tts", !state.features.includes("text_to_speech"));
  document.body.classList.toggle("no-stt", !state.features.includes("speech_to_text"));
  // After a reconnect, what happened meanwhile is read again.
  await loadList(true);
  if (!state.routed) {
    state.routed = true;
    route();
  } else if (state.open) {
    await openConversation(state.open, { refresh: true });
  }
  loadSettings();
  const q = $("search").value.trim();
  if (q) runSearch(q);
});

// Notifications of changes made elsewhere (another tab, the Pi).
client.addEventListener("conversation_created", (ev) => upsertConv(ev.detail.conversation));
client.addEventListener("conversation_updated", (ev) => upsertConv(ev.detail.conversation));
client.addEventListener("conversation_deleted", (ev) => dropConv(ev.detail.id));
client.addEventListener("new_message", (ev) => gotMessage(ev.detail.message));
client.addEventListener("settings_updated", (ev) => { state.settings = ev.detail.settings; });

// ---------- the conversation list ----------

function convMarks(c) {
  const origins = c.origins || [];
  const marks = el("span", { class: "marks" });
  if (origins.includes("voice")) marks.append(el("span", { class: "mark voice", title: "Has voice turns (the Pi)", text: "voice" }));
  if (origins.includes("web")) marks.append(el("span", { class: "mark web", title: "Written on the web", text: "web" }));
  if (c.archived) marks.append(el("span", { class: "mark archived", text: "archived" }));
  return marks;
}

function convRow(c) {
  const li = el("li", {
    class: "conv",
    role: "option",
    id: `conv-${c.id}`,
    "aria-selected": String(c.id === state.open),
    tabindex: "-1",
    "data-id": c.id,
  },
  el("a", { href: `#/c/${c.id}`, class: "conv-link", tabindex: "-1" },
    el("span", { class: "conv-name", text: c.title }),
    el("span", { class: "conv-sub" },
      convMarks(c),
      el("span", { class: "count", text: plural(c.message_count, "message", "messages") }),
      el("time", { datetime: activity(c), title: fullFmt.format(new Date(activity(c))), text: when(activity(c)) }))));
  return li;
}

function sortOrder() {
  state.order.sort((a, b) => {
    const ca = state.convs.get(a);
    const cb = state.convs.get(b);
    const d = activity(cb).localeCompare(activity(ca));
    return d || (b < a ? -1 : b > a ? 1 : 0);
  });
}

function renderList() {
  const ul = $("conv-list");
  const frag = document.createDocumentFragment();
  for (const id of state.order) frag.append(convRow(state.convs.get(id)));
  ul.replaceChildren(frag);
  $("list-empty").hidden = state.order.length > 0 || state.loadingList;
  $("list-more").hidden = !state.hasMore;
  if (!state.order.length) $("list-empty").textContent = state.archived
    ? "No conversations, archived ones included."
    : "No conversations yet. Start one with “New conversation”.";
}

async function loadList(reset) {
  if (state.loadingList) return;
  state.loadingList = true;
  try {
    const before = reset ? undefined : state.order[state.order.length - 1];
    const r = await client.request("get_conversations", {
      include_archived: state.archived,
      limit: PAGE_CONVERSATIONS,
      ...(before ? { before } : {}),
    });
    if (reset) {
      state.convs.clear();
      state.order = [];
    }
    for (const c of r.conversations) {
      if (!state.convs.has(c.id)) state.order.push(c.id);
      state.convs.set(c.id, c);
    }
    state.hasMore = r.has_more;
    document.body.dataset.listLoaded = "1";
    listShown = true;
  } catch (e) {
    toast(`Cannot load the conversations: ${explain(e)}`, "error");
  } finally {
    state.loadingList = false;
    renderList();
    // For the benchmark: when the first list was on screen.
    if (listShown && !performance.getEntriesByName("pichat:list").length) performance.mark("pichat:list");
  }
}
let listShown = false;

function upsertConv(c) {
  if (c.deleted) return dropConv(c.id);
  const visible = state.archived || !c.archived;
  if (!visible) {
    if (state.convs.has(c.id)) {
      state.convs.delete(c.id);
      state.order = state.order.filter((x) => x !== c.id);
    }
  } else {
    if (!state.convs.has(c.id)) state.order.push(c.id);
    state.convs.set(c.id, c);
    sortOrder();
  }
  renderList();
  if (c.id === state.open) renderHeader();
}

function dropConv(id) {
  state.convs.delete(id);
  state.order = state.order.filter((x) => x !== id);
  renderList();
  if (id === state.open) {
    toast("This conversation was deleted.", "info");
    closeConversation();
  }
}

// ---------- a conversation ----------

const vlist = new VList($("messages"), {
  key: (m) => m.id,
  render: renderMessage,
});
vlist.onTop = () => loadOlder();

function renderContent(text) {
  // Plain text, with ``` fenced blocks as code. Never parsed as HTML.
  const box = el("div", { class: "content" });
  const parts = text.split(/^```[^\n]*\n?/m);
  parts.forEach((part, i) => {
    if (!part) return;
    if (i % 2 === 1) box.append(el("pre", {}, el("code", { text: part.replace(/\n$/, "") })));
    else box.append(el("p", { text: part }));
  });
  return box;
}

function renderMessage(m) {
  if (m.kind === "notice") {
    return el("div", { class: "msg notice", role: "note" }, el("p", { text: m.text }));
  }
  const mine = m.role === "user";
  const meta = el("p", { class: "msg-meta" },
    el("span", { class: "who", text: mine ? "You" : m.role === "assistant" ? "Assistant" : "System" }),
    el("time", { datetime: m.created_at, title: fullFmt.format(new Date(m.created_at)), text: when(m.created_at) }));
  if (m.is_audio || m.origin === "voice") {
    meta.append(el("span", { class: "mark voice", title: m.is_audio ? "Spoken" : "From the Pi", text: m.is_audio ? "spoken" : "voice" }));
  }
  if (m.model_id) meta.append(el("span", { class: "model", title: "Model", text: m.model_id }));
  if (m.response_time_ms != null) {
    meta.append(el("span", { class: "rt", title: "Response time", text: `${(m.response_time_ms / 1000).toFixed(1)} s` }));
  }
  if (m.interrupted) meta.append(el("span", { class: "mark warn", text: "cut short" }));
  const row = el("article", {
    class: `msg ${m.role}${m.streaming ? " streaming" : ""}${m.failed ? " failed" : ""}`,
    id: `msg-${m.id}`,
    "aria-label": `${mine ? "You" : "Assistant"}, ${when(m.created_at)}`,
  }, el("div", { class: "bubble" }, meta, renderContent(m.content || (m.streaming ? "…" : ""))));
  const bubble = row.firstChild;
  if (m.role === "assistant" && !m.streaming) {
    bubble.append(el("div", { class: "msg-actions" },
      el("button", { type: "button", class: "link tts", "data-listen": m.id, text: "Listen", "aria-label": "Listen to this answer" }),
      el("button", { type: "button", class: "link", "data-copy": m.id, text: "Copy" })));
  }
  if (m.failed) {
    bubble.append(el("p", { class: "error", text: m.failed },
      el("button", { type: "button", class: "link", "data-retry": m.id, text: " Send again" })));
  }
  return row;
}

function renderHeader() {
  const c = state.convs.get(state.open) || state.openConv;
  if (!c) return;
  state.openConv = c;
  $("conv-title").textContent = c.title;
  const bits = [plural(c.message_count, "message", "messages")];
  if (c.model_id) bits.push(`model ${c.model_id}`);
  if (c.archived) bits.push("archived");
  $("conv-meta").textContent = bits.join(" · ");
  $("btn-archive").textContent = c.archived ? "Unarchive" : "Archive";
  document.title = `${c.title} — pichat`;
}

function closeConversation() {
  state.open = null;
  state.openConv = null;
  vlist.clear();
  $("welcome").hidden = false;
  $("composer").hidden = true;
  $("conv-actions").hidden = true;
  $("typing").hidden = true;
  $("conv-title").textContent = "No conversation open";
  $("conv-meta").textContent = "";
  document.title = "pichat";
  document.body.classList.add("show-list");
  if (location.hash.startsWith("#/c/")) history.replaceState(null, "", "#/");
  renderList();
}

async function openConversation(id, { refresh = false, jumpTo = null } = {}) {
  const same = state.open === id;
  state.open = id;
  document.body.classList.remove("show-list");
  $("welcome").hidden = true;
  $("composer").hidden = false;
  $("conv-actions").hidden = false;
  for (const li of $("conv-list").children) li.setAttribute("aria-selected", String(li.dataset.id === id));
  if (!same) {
    vlist.clear();
    state.openConv = state.convs.get(id) || null;
    $("typing").hidden = true;
    renderHeader();
  }
  try {
    const [conv, page] = await Promise.all([
      client.request("get_conversation", { id }),
      client.request("get_messages", { conversation_id: id, limit: PAGE_MESSAGES }),
    ]);
    if (state.open !== id) return;
    state.openConv = conv.conversation;
    if (state.convs.has(id)) state.convs.set(id, conv.conversation);
    renderHeader();
    if (!same || !refresh) {
      vlist.clear();
      state.olderMore = page.has_more;
      vlist.append(page.messages);
      vlist.scrollToBottom();
    } else {
      // Back after a reconnect: add what came meanwhile.
      vlist.append(page.messages);
      if (!vlist.has(page.messages[0]?.id)) state.olderMore = state.olderMore || page.has_more;
    }
    document.body.dataset.convLoaded = id;
    performance.mark(`pichat:conv:${id}`);
    if (jumpTo) await jump(jumpTo);
  } catch (e) {
    if (state.open !== id) return;
    if (e.code === "not_found") {
      toast("That conversation does not exist (any more).", "error");
      closeConversation();
    } else {
      toast(`Cannot open the conversation: ${explain(e)}`, "error");
    }
  }
}

async function loadOlder(limit = PAGE_MESSAGES) {
  if (!state.open || !state.olderMore || state.loadingOlder) return false;
  const first = vlist.items.find((m) => !m.kind);
  if (!first) return false;
  state.loadingOlder = true;
  const id = state.open;
  try {
    const page = await client.request("get_messages", { conversation_id: id, limit, before: first.id });
    if (state.open !== id) return false;
    state.olderMore = page.has_more;
    vlist.prepend(page.messages);
    return true;
  } catch (e) {
    toast(`Cannot load older messages: ${explain(e)}`, "error");
    return false;
  } finally {
    state.loadingOlder = false;
  }
}

/// Scrolls to a message, loading older pages until it is there.
async function jump(msgId) {
  while (!vlist.has(msgId) && state.olderMore) {
    if (!(await loadOlder(JUMP_PAGE))) break;
  }
  const row = vlist.scrollTo(msgId);
  if (!row) {
    toast("That message is not in this conversation any more.", "error");
    return;
  }
  row.classList.add("flash");
  row.setAttribute("tabindex", "-1");
  row.focus({ preventScroll: true });
  setTimeout(() => row.classList.remove("flash"), 2500);
}

function gotMessage(m) {
  const c = state.convs.get(m.conversation_id);
  if (c) {
    c.message_count += vlist.has(m.id) && m.conversation_id === state.open ? 0 : 1;
    if (!c.last_message_at || m.created_at > c.last_message_at) c.last_message_at = m.created_at;
    if (m.origin && !(c.origins || []).includes(m.origin)) c.origins = [...(c.origins || []), m.origin];
    sortOrder();
    renderList();
  } else if (!state.loadingList) {
    // A conversation not loaded yet (or newer than the list): read the top again.
    loadList(true);
  }
  if (m.conversation_id === state.open) {
    if (vlist.has(m.id)) vlist.replace(m);
    else vlist.append([m]);
    renderHeader();
  }
}

// ---------- writing ----------

async function send(text, { isAudio = false, id = uuid7() } = {}) {
  const convId = state.open;
  if (!convId) return;
  if (!state.features.includes("ai_replies")) {
    toast("This server has no AI engine configured (server.llm_engines).", "error");
    return;
  }
  const question = {
    id, conversation_id: convId, role: "user", content: text, created_at: new Date().toISOString(),
    is_audio: isAudio, origin: "web", pending: true,
  };
  if (vlist.has(id)) vlist.replace({ ...question, failed: null });
  else vlist.append([question]);
  vlist.scrollToBottom();
  let streamId = null;
  let streamed = null;
  const showTyping = (on) => {
    state.typing = on;
    $("typing").hidden = !on;
  };
  try {
    const reply = await client.sendMessage({ id, conversation_id: convId, content: text, is_audio: isAudio }, (act, pl) => {
      if (state.open !== convId) return;
      if (act === "message_sent") {
        vlist.replace(pl.message, id);
        const c = state.convs.get(convId);
        if (c && !pl.duplicate && c.message_count === 0 && c.title === "New conversation") {
          // A new conversation is named after its first question, as on the Pi.
          autoTitle(convId, text);
        }
        if (c && !pl.duplicate) {
          c.message_count += 1;
          c.last_message_at = pl.message.created_at;
          if (!(c.origins || []).includes("web")) c.origins = [...(c.origins || []), "web"];
          sortOrder();
          renderList();
          renderHeader();
        }
      } else if (act === "typing_indicator") {
        showTyping(pl.is_typing);
      } else if (act === "message_stream") {
        if (!streamed) {
          streamId = pl.message_id;
          streamed = {
            id: streamId, conversation_id: convId, role: "assistant", content: "",
            created_at: new Date().toISOString(), origin: "web", streaming: true,
          };
          if (!vlist.has(streamId)) vlist.append([streamed]);
        }
        streamed.content += pl.token;
        if (pl.finished && pl.message) {
          vlist.replace({ ...pl.message, interrupted: pl.interrupted });
          const c = state.convs.get(convId);
          if (c) {
            c.message_count += 1;
            c.last_message_at = pl.message.created_at;
            sortOrder();
            renderList();
            renderHeader();
          }
        } else {
          vlist.replace({ ...streamed });
        }
      } else if (act === "error") {
        showTyping(false);
        const q = vlist.get(id);
        if (q) vlist.replace({ ...q, failed: `No answer: ${pl.message}` });
      }
    });
    showTyping(false);
    return reply;
  } catch (e) {
    showTyping(false);
    if (streamed && vlist.has(streamId) && vlist.get(streamId).streaming) vlist.remove(streamId);
    const q = vlist.get(id);
    if (q) vlist.replace({ ...q, pending: false, failed: `Not sent: ${explain(e)}` });
  }
}

/// The first line of a question, cut at a word near 60 characters.
function titleFrom(text) {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  if (line.length <= 60) return line;
  const cut = line.slice(0, 60);
  const sp = cut.lastIndexOf(" ");
  return `${(sp > 30 ? cut.slice(0, sp) : cut).trim()}…`;
}

async function autoTitle(convId, text) {
  const title = titleFrom(text);
  if (!title) return;
  try {
    const r = await client.request("update_conversation", { id: convId, title });
    upsertConv(r.conversation);
  } catch {
    // Keeps "New conversation"; nothing lost.
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const box = $("composer-input");
  const text = box.value;
  if (!text.trim()) return;
  if (client.state !== "open") {
    toast("Not connected: the message is kept here; send it when the server is back.", "error");
    return;
  }
  box.value = "";
  autosize();
  send(text);
});

function autosize() {
  const box = $("composer-input");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, window.innerHeight * 0.35)}px`;
}

$("composer-input").addEventListener("input", autosize);
$("composer-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("messages").addEventListener("click", async (ev) => {
  const t = ev.target.closest("button");
  if (!t) return;
  if (t.dataset.listen) listen(t.dataset.listen, t);
  if (t.dataset.copy) {
    const m = vlist.get(t.dataset.copy);
    try {
      await navigator.clipboard.writeText(m.content);
      toast("Copied.", "ok");
    } catch {
      toast("The browser did not allow copying.", "error");
    }
  }
  if (t.dataset.retry) {
    const m = vlist.get(t.dataset.retry);
    if (m) send(m.content, { id: m.id, isAudio: m.is_audio });
  }
});

// ---------- conversation actions ----------

async function newConversation() {
  try {
    const r = await client.request("create_conversation", { id: uuid7() });
    upsertConv(r.conversation);
    location.hash = `#/c/${r.conversation.id}`;
    setTimeout(() => $("composer-input").focus(), 0);
  } catch (e) {
    toast(`Cannot create a conversation: ${explain(e)}`, "error");
  }
}

function ask(dialog) {
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function rename() {
  const c = state.openConv;
  if (!c) return;
  $("rename-input").value = c.title;
  const d = $("dlg-rename");
  setTimeout(() => $("rename-input").select(), 0);
  if ((await ask(d)) !== "ok") return;
  const title = $("rename-input").value.trim();
  if (!title || title === c.title) return;
  try {
    const r = await client.request("update_conversation", { id: c.id, title });
    upsertConv(r.conversation);
    state.openConv = r.conversation;
    renderHeader();
  } catch (e) {
    toast(`Cannot rename: ${explain(e)}`, "error");
  }
}

async function toggleArchive() {
  const c = state.openConv;
  if (!c) return;
  try {
    const r = await client.request("update_conversation", { id: c.id, archived: !c.archived });
    state.openConv = r.conversation;
    upsertConv(r.conversation);
    renderHeader();
    toast(r.conversation.archived ? "Archived (shown with the “Archived” filter)." : "Back in the list.", "ok");
  } catch (e) {
    toast(`Cannot archive: ${explain(e)}`, "error");
  }
}

async function remove() {
  const c = state.openConv;
  if (!c) return;
  $("confirm-title").textContent = "Delete this conversation?";
  $("confirm-text").textContent = `“${c.title}” and its ${plural(c.message_count, "message", "messages")} will be deleted on every device. This cannot be undone.`;
  if ((await ask($("dlg-confirm"))) !== "ok") return;
  try {
    await client.request("delete_conversation", { id: c.id });
    dropConv(c.id);
    closeConversation();
    toast("Deleted.", "ok");
  } catch (e) {
    toast(`Cannot delete: ${explain(e)}`, "error");
  }
}

async function exportDialog() {
  const d = $("dlg-export");
  const one = d.querySelector('input[value="one"]');
  one.disabled = !state.open;
  if (!state.open) d.querySelector('input[value="all"]').checked = true;
  if ((await ask(d)) !== "ok") return;
  const scope = d.querySelector('input[name="scope"]:checked').value;
  const format = d.querySelector('input[name="format"]:checked').value;
  const u = new URL("/export", location.href);
  u.searchParams.set("format", format);
  if (scope === "one" && state.open) u.searchParams.set("conversation", state.open);
  // A plain link: the server sends it as a download (Content-Disposition).
  const a = el("a", { href: u.pathname + u.search, download: "" });
  document.body.append(a);
  a.click();
  a.remove();
}

$("btn-new").addEventListener("click", newConversation);
$("btn-rename").addEventListener("click", rename);
$("btn-archive").addEventListener("click", toggleArchive);
$("btn-delete").addEventListener("click", remove);
$("btn-export").addEventListener("click", exportDialog);
$("btn-back").addEventListener("click", () => { location.hash = "#/"; });
$("btn-more").addEventListener("click", () => loadList(false));
$("status-retry").addEventListener("click", () => client.retryNow());
$("show-archived").addEventListener("change", (ev) => {
  state.archived = ev.target.checked;
  loadList(true);
});

// Load more when the end of the list comes into view.
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && state.hasMore) loadList(false);
}, { root: $("list-wrap"), rootMargin: "400px" }).observe($("list-more"));

// Keyboard in the list: arrows / j k move, Enter opens.
$("conv-list").addEventListener("keydown", (ev) => {
  const items = [...$("conv-list").children];
  if (!items.length) return;
  const cur = items.findIndex((li) => li === document.activeElement);
  let next = cur;
  if (ev.key === "ArrowDown" || ev.key === "j") next = Math.min(items.length - 1, cur + 1);
  else if (ev.key === "ArrowUp" || ev.key === "k") next = Math.max(0, cur - 1);
  else if (ev.key === "Home") next = 0;
  else if (ev.key === "End") next = items.length - 1;
  else if (ev.key === "Enter" && cur >= 0) {
    ev.preventDefault();
    location.hash = `#/c/${items[cur].dataset.id}`;
    return;
  } else return;
  ev.preventDefault();
  items[next].focus();
  if (next >= items.length - 5 && state.hasMore) loadList(false);
});
$("conv-list").addEventListener("focus", (ev) => {
  if (ev.target !== $("conv-list")) return;
  const sel = $("conv-list").querySelector('[aria-selected="true"]') || $("conv-list").firstElementChild;
  sel?.focus();
});
$("conv-list").addEventListener("click", (ev) => {
  const li = ev.target.closest("li.conv");
  if (li) li.focus();
});

// ---------- search ----------

function snippet(text) {
  // The server marks matched words with [ and ]: shown as <mark>.
  const p = el("p", { class: "snippet" });
  const re = /\[([^\[\]]*)\]/g;
  let last = 0;
  for (let m; (m = re.exec(text));) {
    p.append(text.slice(last, m.index), el("mark", { text: m[1] }));
    last = m.index + m[0].length;
  }
  p.append(text.slice(last));
  return p;
}

async function runSearch(q) {
  const seq = ++state.searchSeq;
  const info = $("search-info");
  const ul = $("search-results");
  $("search-wrap").hidden = false;
  $("list-wrap").hidden = true;
  info.textContent = "Searching…";
  try {
    const r = await client.request("search", { query: q, limit: 50 });
    if (seq !== state.searchSeq) return;
    info.textContent = r.hits.length ? `${plural(r.hits.length, "match", "matches")} for “${q}”` : `Nothing matches “${q}”.`;
    ul.replaceChildren(...r.hits.map((h) => el("li", { class: "conv hit" },
      el("a", { href: `#/c/${h.message.conversation_id}/${h.message.id}`, class: "conv-link" },
        el("span", { class: "conv-name", text: h.conversation_title || "Conversation" }),
        snippet(h.snippet),
        el("span", { class: "conv-sub" },
          el("span", { text: h.message.role === "user" ? "You" : "Assistant" }),
          el("time", { datetime: h.message.created_at, text: when(h.message.created_at) }))))));
  } catch (e) {
    if (seq !== state.searchSeq) return;
    info.textContent = `Cannot search: ${explain(e)}`;
    ul.replaceChildren();
  }
}

let searchTimer = 0;
$("search").addEventListener("input", (ev) => {
  clearTimeout(searchTimer);
  const q = ev.target.value.trim();
  if (!q) {
    state.searchSeq++;
    $("search-wrap").hidden = true;
    $("list-wrap").hidden = false;
    return;
  }
  searchTimer = setTimeout(() => runSearch(q), 250);
});
$("search").addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") {
    ev.target.value = "";
    ev.target.dispatchEvent(new Event("input"));
  } else if (ev.key === "Enter") {
    clearTimeout(searchTimer);
    const q = ev.target.value.trim();
    if (q) runSearch(q);
  } else if (ev.key === "ArrowDown") {
    ev.preventDefault();
    $("search-results").querySelector("a")?.focus();
  }
});

// ---------- settings ----------

async function loadSettings() {
  try {
    const r = await client.request("get_settings", {});
    state.settings = r.settings;
  } catch (e) {
    state.settings = null;
  }
}

function fillSettings() {
  const s = state.settings || { voice_settings: {} };
  const sel = $("set-model");
  sel.replaceChildren(el("option", { value: "", text: "The server’s default (its first engine)" }));
  const ids = new Set();
  for (const m of state.models) {
    const id = m.model || m.engine;
    ids.add(id);
    sel.append(el("option", { value: id, text: m.model ? `${m.model} (${m.engine})` : m.engine }));
  }
  if (s.selected_model && !ids.has(s.selected_model)) {
    sel.append(el("option", { value: s.selected_model, text: `${s.selected_model} (not configured on this server)` }));
  }
  sel.value = s.selected_model || "";
  $("set-personality").value = s.assistant_personality || "";
  const v = s.voice_settings || {};
  $("set-gender").value = v.gender || "";
  $("set-accent").value = v.accent || "";
  $("set-speed").value = v.speed ?? 1;
  $("set-speed-value").textContent = `${Number($("set-speed").value).toFixed(2)}×`;
  $("settings-error").hidden = true;
}

$("set-speed").addEventListener("input", () => {
  $("set-speed-value").textContent = `${Number($("set-speed").value).toFixed(2)}×`;
});

async function settingsDialog() {
  if (!state.settings) await loadSettings();
  fillSettings();
  const d = $("dlg-settings");
  for (;;) {
    if ((await ask(d)) !== "ok") return;
    const s = state.settings || { voice_settings: {} };
    const v = s.voice_settings || {};
    const upd = {};
    const model = $("set-model").value || null;
    if (model !== (s.selected_model ?? null)) upd.selected_model = model;
    const pers = $("set-personality").value.trim() || null;
    if (pers !== (s.assistant_personality ?? null)) upd.assistant_personality = pers;
    const voice = {};
    const gender = $("set-gender").value || null;
    if (gender !== (v.gender ?? null)) voice.gender = gender;
    const accent = $("set-accent").value.trim() || null;
    if (accent !== (v.accent ?? null)) voice.accent = accent;
    const speed = Number($("set-speed").value);
    if (speed !== (v.speed ?? 1)) voice.speed = speed;
    if (Object.keys(voice).length) upd.voice_settings = voice;
    if (!Object.keys(upd).length) return;
    try {
      const r = await client.request("update_settings", upd);
      state.settings = r.settings;
      toast("Settings saved.", "ok");
      return;
    } catch (e) {
      $("settings-error").textContent = `Not saved: ${explain(e)}`;
      $("settings-error").hidden = false;
    }
  }
}

$("btn-settings").addEventListener("click", settingsDialog);

// ---------- speech ----------

async function listen(msgId, button) {
  const m = vlist.get(msgId);
  if (!m) return;
  if (!state.features.includes("text_to_speech")) {
    toast("This server has no text-to-speech engine (server.tts_engines).", "error");
    return;
  }
  const label = button.textContent;
  button.textContent = "Preparing…";
  button.disabled = true;
  try {
    const text = m.content.slice(0, 4000);
    const v = state.settings?.voice_settings;
    const r = await client.request("text_to_speech", { text, ...(v && (v.gender || v.accent || v.speed) ? { voice_settings: v } : {}) }, { timeout: 180000 });
    const a = await audio.play(audio.fromBase64(r.audio_data));
    button.textContent = "Playing…";
    await new Promise((res) => { a.addEventListener("ended", res, { once: true }); a.addEventListener("pause", res, { once: true }); });
  } catch (e) {
    toast(`Cannot speak it: ${explain(e)}`, "error");
  } finally {
    button.textContent = label;
    button.disabled = false;
  }
}

let recorder = null;
async function toggleMic() {
  const btn = $("btn-mic");
  if (recorder) {
    const r = recorder;
    recorder = null;
    btn.setAttribute("aria-pressed", "false");
    btn.classList.remove("recording");
    btn.disabled = true;
    try {
      const { wav, seconds } = await r.stop();
      if (seconds < 0.3) {
        toast("That was too short to hear anything.", "error");
        return;
      }
      $("composer-input").placeholder = "Transcribing…";
      const res = await client.request("speech_to_text", { audio_data: audio.toBase64(wav) }, { timeout: 180000 });
      const text = res.text.trim();
      if (!text) {
        toast("Nothing was heard. Try again, closer to the microphone.", "error");
        return;
      }
      send(text, { isAudio: true });
    } catch (e) {
      toast(`Cannot transcribe: ${explain(e)}`, "error");
    } finally {
      btn.disabled = false;
      $("composer-input").placeholder = "Message (Enter sends)";
    }
    return;
  }
  const why = audio.micUnavailable();
  if (why) {
    toast(`Cannot ask by voice: ${why}.`, "error");
    return;
  }
  if (!state.features.includes("speech_to_text")) {
    toast("This server has no speech-to-text engine (server.stt_engines).", "error");
    return;
  }
  const r = new audio.Recorder();
  try {
    await r.start();
  } catch (e) {
    toast(`The microphone is not available: ${explain(e)}`, "error");
    r.cancel();
    return;
  }
  recorder = r;
  r.onLimit = () => { if (recorder === r) toggleMic(); };
  btn.setAttribute("aria-pressed", "true");
  btn.classList.add("recording");
  toast("Listening… click the microphone again (or press Space) to send.", "info");
}

$("btn-mic").addEventListener("click", toggleMic);

// ---------- routes and keys ----------

function route() {
  const h = location.hash;
  const m = h.match(/^#\/c\/([0-9a-f-]{36})(?:\/([0-9a-f-]{36}))?$/i);
  if (m) {
    const [, conv, msg] = m;
    if (client.state !== "open") return;
    if (msg && state.open === conv && vlist.items.length) jump(msg);
    else openConversation(conv, { jumpTo: msg || null });
  } else if (state.open) {
    closeConversation();
  } else {
    document.body.classList.add("show-list");
  }
}
window.addEventListener("hashchange", route);

function typingInField(t) {
  return t.closest("input, textarea, select, [contenteditable]") || t.closest("dialog");
}

document.addEventListener("keydown", (ev) => {
  if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey) {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "k") {
      ev.preventDefault();
      $("search").focus();
    }
    return;
  }
  if (ev.key === "Escape") {
    if (document.querySelector("dialog[open]")) return;
    if (recorder) { recorder.cancel(); recorder = null; $("btn-mic").classList.remove("recording"); return; }
    if (document.activeElement === $("composer-input") && $("composer-input").value) return;
    if (state.open) { location.hash = "#/"; $("conv-list").focus(); }
    return;
  }
  if (typingInField(ev.target)) return;
  const k = ev.key;
  if (k === "/") { ev.preventDefault(); $("search").focus(); }
  else if (k === "n") { ev.preventDefault(); newConversation(); }
  else if (k === "i" && state.open) { ev.preventDefault(); $("composer-input").focus(); }
  else if (k === "r" && state.open) { ev.preventDefault(); rename(); }
  else if (k === "a" && state.open) { ev.preventDefault(); toggleArchive(); }
  else if (k === "e") { ev.preventDefault(); exportDialog(); }
  else if (k === ",") { ev.preventDefault(); settingsDialog(); }
  else if (k === "?") { ev.preventDefault(); $("dlg-keys").showModal(); }
  else if ((k === "j" || k === "k") && ev.target.closest("#conv-list") == null) {
    ev.preventDefault();
    const items = [...$("conv-list").children];
    const cur = items.findIndex((li) => li.dataset.id === state.open);
    const next = items[Math.max(0, Math.min(items.length - 1, cur + (k === "j" ? 1 : -1)))];
    if (next) location.hash = `#/c/${next.dataset.id}`;
  } else if (k === " " && recorder) { ev.preventDefault(); toggleMic(); }
});

// ---------- start ----------

client.start();
// For the tests and the benchmark: the client, to watch its state.
window.pichat = { client, state, vlist };
