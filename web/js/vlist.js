// A windowed list of variable-height rows: every item is kept in memory, only
// the rows near the viewport are in the DOM, between two spacers whose
// heights stand for the rest (measured heights where known, an estimate
// elsewhere). The view is anchored on the first visible row, so rows
// measured or prepended above it never make the page jump; and when the
// view is at the bottom it stays there as rows grow (a streamed reply).

const OVERSCAN_PX = 800;
const STICK_PX = 48;

export class VList {
  /// `render(item)` makes a row element; `key(item)` is its stable id.
  constructor(scroller, { render, key, estimate = 96 }) {
    this.scroller = scroller;
    this.renderItem = render;
    this.key = key;
    this.estimate = estimate;
    this.items = [];
    this.index = new Map();
    this.heights = new Map();
    this.rows = new Map();
    this.top = document.createElement("div");
    this.bottom = document.createElement("div");
    this.top.className = "vspacer";
    this.bottom.className = "vspacer";
    this.body = document.createElement("div");
    this.body.className = "vbody";
    this.body.append(this.top, this.bottom);
    scroller.append(this.body);
    this.offsets = [0];
    this.stick = true;
    this.frame = 0;
    this.onTop = null;
    scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(scroller);
  }

  clear() {
    for (const el of this.rows.values()) el.remove();
    this.rows.clear();
    this.items = [];
    this.index.clear();
    this.heights.clear();
    this.offsets = [0];
    this.stick = true;
    this.layout();
  }

  reindex() {
    this.index.clear();
    this.items.forEach((it, i) => this.index.set(this.key(it), i));
  }

  has(k) {
    return this.index.has(k);
  }

  get(k) {
    const i = this.index.get(k);
    return i === undefined ? undefined : this.items[i];
  }

  /// Older items, before the first ones (the view does not move).
  prepend(items) {
    const fresh = items.filter((it) => !this.index.has(this.key(it)));
    if (!fresh.length) return;
    const anchor = this.anchor();
    this.items = fresh.concat(this.items);
    this.reindex();
    this.layout(anchor);
  }

  /// Newer items at the end (the view follows when it was at the bottom).
  append(items) {
    const fresh = items.filter((it) => !this.index.has(this.key(it)));
    if (!fresh.length) return;
    const anchor = this.anchor();
    this.items.push(...fresh);
    fresh.forEach((it, j) => this.index.set(this.key(it), this.items.length - fresh.length + j));
    this.layout(anchor);
  }

  /// Puts `item` in place of the row with key `oldKey` (or `key(item)`).
  replace(item, oldKey = this.key(item)) {
    const i = this.index.get(oldKey);
    if (i === undefined) return false;
    const anchor = this.anchor();
    const el = this.rows.get(oldKey);
    if (el) {
      el.remove();
      this.rows.delete(oldKey);
    }
    const h = this.heights.get(oldKey);
    this.heights.delete(oldKey);
    this.items[i] = item;
    if (oldKey !== this.key(item)) {
      this.index.delete(oldKey);
      this.index.set(this.key(item), i);
    }
    if (h !== undefined) this.heights.set(this.key(item), h);
    this.layout(anchor);
    return true;
  }

  remove(k) {
    const i = this.index.get(k);
    if (i === undefined) return;
    const anchor = this.anchor();
    this.items.splice(i, 1);
    this.rows.get(k)?.remove();
    this.rows.delete(k);
    this.heights.delete(k);
    this.reindex();
    this.layout(anchor);
  }

  /// The row element of `k` if it is in the DOM.
  row(k) {
    return this.rows.get(k);
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_PX;
  }

  scrollToBottom() {
    this.stick = true;
    this.layout();
  }

  /// Brings the row of `k` into view (centred) and returns its element.
  scrollTo(k) {
    const i = this.index.get(k);
    if (i === undefined) return null;
    this.stick = false;
    this.computeOffsets();
    const s = this.scroller;
    s.scrollTop = Math.max(0, this.offsets[i] - s.clientHeight / 3);
    this.layout({ i, delta: this.offsets[i] - s.scrollTop });
    return this.rows.get(k) || null;
  }

  heightOf(i) {
    return this.heights.get(this.key(this.items[i])) ?? this.estimate;
  }

  computeOffsets() {
    const n = this.items.length;
    const off = new Array(n + 1);
    off[0] = 0;
    for (let i = 0; i < n; i++) off[i + 1] = off[i] + this.heightOf(i);
    this.offsets = off;
  }

  /// The first row visible and how far the viewport's top is into it.
  anchor() {
    if (this.atBottom()) return { bottom: true };
    const st = this.scroller.scrollTop;
    const i = this.find(st);
    if (i >= this.items.length) return { bottom: true };
    return { key: this.key(this.items[i]), delta: st - this.offsets[i] };
  }

  /// The first row whose bottom is below `y`.
  find(y) {
    const off = this.offsets;
    let lo = 0;
    let hi = off.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (off[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const s = this.scroller;
      this.stick = this.atBottom();
      this.layout();
      if (s.scrollTop < OVERSCAN_PX && this.onTop) this.onTop();
    });
  }

  /// Renders the rows around the viewport and restores the anchor.
  layout(anchor) {
    const s = this.scroller;
    if (!anchor) anchor = this.stick ? { bottom: true } : this.anchor();
    if (anchor.bottom) this.stick = true;
    for (let pass = 0; pass < 3; pass++) {
      this.computeOffsets();
      let st;
      if (anchor.bottom) {
        st = Math.max(0, this.offsets[this.items.length] - s.clientHeight);
      } else {
        const i = anchor.key !== undefined ? this.index.get(anchor.key) ?? 0 : anchor.i ?? 0;
        st = (this.offsets[i] ?? 0) + (anchor.delta || 0);
      }
      const from = Math.max(0, this.find(st - OVERSCAN_PX));
      const to = Math.min(this.items.length, this.find(st + s.clientHeight + OVERSCAN_PX) + 1);
      const changed = this.mount(from, to);
      this.top.style.height = `${this.offsets[from]}px`;
      this.bottom.style.height = `${this.offsets[this.items.length] - this.offsets[to]}px`;
      if (!changed) {
        if (Math.abs(s.scrollTop - st) > 1) s.scrollTop = st;
        break;
      }
      // Heights were measured: lay out again with the true ones.
      if (pass === 2) s.scrollTop = st;
    }
    if (anchor.bottom) s.scrollTop = s.scrollHeight;
  }

  /// Puts rows [from, to) in the DOM, in order; measures new ones. True
  /// when a measured height differs from what was assumed.
  mount(from, to) {
    const want = new Set();
    for (let i = from; i < to; i++) want.add(this.key(this.items[i]));
    for (const [k, el] of this.rows) {
      if (!want.has(k)) {
        el.remove();
        this.rows.delete(k);
      }
    }
    let prev = this.top;
    const fresh = [];
    for (let i = from; i < to; i++) {
      const k = this.key(this.items[i]);
      let el = this.rows.get(k);
      if (!el) {
        el = this.renderItem(this.items[i]);
        el.dataset.key = k;
        this.rows.set(k, el);
        fresh.push(k);
      }
      if (prev.nextSibling !== el) prev.after(el);
      prev = el;
    }
    let changed = false;
    for (const k of this.rows.keys()) {
      const el = this.rows.get(k);
      const h = el.offsetHeight;
      if (h && this.heights.get(k) !== h) {
        this.heights.set(k, h);
        changed = true;
      }
    }
    return changed;
  }
}
