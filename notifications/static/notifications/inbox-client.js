// The inbox client: one end user's live inbox, for our own /inbox/ page and for any other
// product's frontend (docs/inbox-embed.md). No dependencies, an ES module.
//
//   const client = new InboxClient({ baseUrl, getToken });   // or { token }
//   client.addEventListener("notification", (e) => show(e.detail.item));
//   client.addEventListener("unread", (e) => badge(e.detail.count));
//   client.start();
//
// Live over the websocket; when websockets fail, server-sent events; when those fail too,
// long-polling: chosen automatically, in that order. Every reconnect backs off
// exponentially with jitter and resumes from the last seq it has, so no item is missed
// or repeated, across a server restart too. Events (CustomEvent, data in `detail`):
//   notification {seq, item}   a new item, once each, in seq order
//   unread       {count}       the unread count
//   item         {item}        an item changed: read, unread, archived, snoozed, back from snooze
//   read_all     {up_to_seq, read_at}  every item up to that seq was read
//   presence     {changes}     presence of the users watched (websocket only)
//   status       {state, transport, retryInMs}  state: connecting | live | reconnecting | stopped | signed-out
//   resync       {}            reconnected after a gap: item states may have changed meanwhile

const TRANSPORTS = ["websocket", "sse", "poll"];
// A transport that fails this many times in a row without ever opening is given up for
// the next one (websockets blocked by a proxy, SSE buffered away...).
const FAILURES_BEFORE_FALLBACK = 2;
const PING_INTERVAL_MS = 25_000;
// A websocket or stream that has not opened within this long counts as failed.
const OPEN_TIMEOUT_MS = 8_000;
// Close codes of the inbox socket that mean the credentials are no good (realtime/auth.py).
const AUTH_CLOSE_CODES = new Set([4401, 4403]);

export class InboxClient extends EventTarget {
  constructor({
    baseUrl = "",
    token = null,
    getToken = null,
    lastSeq = 0,
    transports = TRANSPORTS,
    backoffStartMs = 1_000,
    backoffMaxMs = 30_000,
  } = {}) {
    super();
    if (!token && !getToken) throw new TypeError("InboxClient needs a token or a getToken function");
    this.baseUrl = String(baseUrl).replace(/\/$/, "");
    this.token = token;
    this.getToken = getToken;
    this.lastSeq = Number(lastSeq) || 0;
    this.transports = transports.filter((name) => TRANSPORTS.includes(name));
    this.backoffStartMs = backoffStartMs;
    this.backoffMaxMs = backoffMaxMs;
    this.transportIndex = 0;
    this.failures = 0; // consecutive failures of the current transport without opening
    this.attempt = 0; // consecutive reconnects, for the backoff
    this.running = false;
    this.everLive = false;
    this.activity = null;
    this.watching = new Set();
    this._close = null; // closes the current connection
    this._retry = null;
  }

  get transport() {
    return this.transports[this.transportIndex];
  }

  start() {
    if (this.running) return;
    this.running = true;
    this._connect();
  }

  stop() {
    this.running = false;
    window.clearTimeout(this._retry);
    if (this._close) this._close();
    this._close = null;
    this._status("stopped");
  }

  // --- the inbox API ------------------------------------------------------------------

  /** A page of the inbox, newest first: {results, unread_count, last_seq}. */
  list({ before = null, archived = false, limit = 30 } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before !== null) query.set("before", String(before));
    if (archived) query.set("archived", "true");
    return this._api("GET", `/api/v1/inbox/?${query}`);
  }

  markRead(id) {
    return this._api("POST", `/api/v1/inbox/${id}/read/`);
  }

  markUnread(id) {
    return this._api("POST", `/api/v1/inbox/${id}/unread/`);
  }

  markAllRead() {
    return this._api("POST", "/api/v1/inbox/read-all/");
  }

  archive(id) {
    return this._api("POST", `/api/v1/inbox/${id}/archive/`);
  }

  unarchive(id) {
    return this._api("POST", `/api/v1/inbox/${id}/unarchive/`);
  }

  /** Hide the item until `until` (a Date or ISO 8601 text). */
  snooze(id, until) {
    const iso = until instanceof Date ? until.toISOString() : String(until);
    return this._api("POST", `/api/v1/inbox/${id}/snooze/`, { until: iso });
  }

  unsnooze(id) {
    return this._api("DELETE", `/api/v1/inbox/${id}/snooze/`);
  }

  /** Tell presence whether the user is "active" or "idle" (websocket only; kept for reconnects). */
  setActivity(state) {
    this.activity = state;
    this._send({ type: "activity", state });
  }

  /** Follow the presence of these users (external ids): `presence` events (websocket only). */
  watchPresence(externalIds) {
    for (const id of externalIds) this.watching.add(id);
    if (externalIds.length) this._send({ type: "presence.subscribe", recipients: externalIds });
  }

  // --- internals ----------------------------------------------------------------------

  async _token(renew = false) {
    if (this.getToken && (renew || !this.token)) this.token = await this.getToken();
    return this.token;
  }

  async _api(method, path, body = undefined, retried = false) {
    const token = await this._token();
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
    });
    if (response.status === 401 && this.getToken && !retried) {
      await this._token(true);
      return this._api(method, path, body, true);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(`${method} ${path} answered ${response.status}`);
      error.status = response.status;
      error.errors = data.errors || {};
      throw error;
    }
    return data;
  }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _status(state, extra = {}) {
    this._emit("status", { state, transport: this.transport, ...extra });
  }

  _notification(seq, item) {
    // Each seq once: a resume and a live frame may both carry an item.
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    this._emit("notification", { seq, item });
  }

  _frame(frame) {
    switch (frame.type) {
      case "notification":
        this._notification(frame.seq, frame.item);
        break;
      case "unread_count":
        this._emit("unread", { count: frame.count });
        break;
      case "item":
        this._emit("item", { item: frame.item });
        break;
      case "read_all":
        this._emit("read_all", { up_to_seq: frame.up_to_seq, read_at: frame.read_at });
        break;
      case "presence":
        this._emit("presence", { changes: frame.changes });
        break;
      case "pong":
        break;
      case "error":
        console.warn("the inbox server refused a frame", frame.errors);
        break;
      default:
        break; // newer servers may send more kinds of frames
    }
  }

  _send(frame) {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) this._socket.send(JSON.stringify(frame));
  }

  async _connect() {
    if (!this.running) return;
    this._status(this.everLive ? "reconnecting" : "connecting");
    let token;
    try {
      token = await this._token(this.attempt > 0 && Boolean(this.getToken));
    } catch (error) {
      console.warn("no inbox token", error);
      this._failed(false);
      return;
    }
    if (!this.running) return;
    const open = { websocket: this._websocket, sse: this._sse, poll: this._poll }[this.transport];
    open.call(this, token);
  }

  _opened() {
    if (this.attempt > 0 || this.everLive) this._emit("resync");
    this.failures = 0;
    this.attempt = 0;
    this.everLive = true;
    this._status("live");
  }

  /** The connection ended; `wasOpen`: it had opened (a drop, not a failure to connect). */
  _failed(wasOpen, { fatal = false } = {}) {
    this._close = null;
    if (!this.running) return;
    if (fatal) {
      this.running = false;
      this._status("signed-out");
      return;
    }
    if (!wasOpen) {
      this.failures += 1;
      if (this.failures >= FAILURES_BEFORE_FALLBACK && this.transportIndex < this.transports.length - 1) {
        this.transportIndex += 1;
        this.failures = 0;
        this.attempt = 0;
        this._connect();
        return;
      }
    }
    // Exponential backoff with jitter, so a restarted server is not stampeded.
    const delay = Math.min(this.backoffMaxMs, this.backoffStartMs * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this._status("reconnecting", { retryInMs: Math.round(delay) });
    this._retry = window.setTimeout(() => this._connect(), delay);
  }

  _url(path, query) {
    const base = this.baseUrl || window.location.origin;
    const url = new URL(path, base);
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, String(value));
    return url;
  }

  _websocket(token) {
    const url = this._url("/ws/inbox/", { token });
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    this._socket = socket;
    let wasOpen = false;
    let pinger = null;
    const timeout = window.setTimeout(() => socket.close(), OPEN_TIMEOUT_MS);
    // Live once the server's first frame (the unread count) arrives, not at "open": a
    // proxy that accepts the upgrade and drops the socket counts as a failure.
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "resume", after: this.lastSeq }));
      if (this.activity) socket.send(JSON.stringify({ type: "activity", state: this.activity }));
      if (this.watching.size) socket.send(JSON.stringify({ type: "presence.subscribe", recipients: [...this.watching] }));
      pinger = window.setInterval(() => this._send({ type: "ping" }), PING_INTERVAL_MS);
    });
    socket.addEventListener("message", (event) => {
      if (!wasOpen) {
        window.clearTimeout(timeout);
        wasOpen = true;
        this._opened();
      }
      try {
        this._frame(JSON.parse(event.data));
      } catch (error) {
        console.warn("unreadable inbox frame", error);
      }
    });
    socket.addEventListener("close", (event) => {
      window.clearTimeout(timeout);
      window.clearInterval(pinger);
      if (this._socket === socket) this._socket = null;
      if (AUTH_CLOSE_CODES.has(event.code) && this.getToken) {
        this.token = null; // a new token next time
        this._failed(wasOpen);
      } else {
        this._failed(wasOpen, { fatal: AUTH_CLOSE_CODES.has(event.code) });
      }
    });
    this._close = () => {
      this._socket = null;
      socket.close(1000);
    };
  }

  _sse(token) {
    const source = new EventSource(this._url("/sse/inbox/", { token, after: this.lastSeq }));
    let wasOpen = false;
    let ended = false;
    const end = () => {
      if (ended) return false;
      ended = true;
      window.clearTimeout(timeout);
      source.close();
      return true;
    };
    const timeout = window.setTimeout(() => end() && this._failed(false), OPEN_TIMEOUT_MS);
    source.addEventListener("open", () => {
      window.clearTimeout(timeout);
      wasOpen = true;
      this._opened();
    });
    for (const type of ["notification", "unread_count", "item", "read_all"]) {
      source.addEventListener(type, (event) => {
        try {
          this._frame(JSON.parse(event.data));
        } catch (error) {
          console.warn("unreadable inbox event", error);
        }
      });
    }
    // EventSource would reconnect by itself with the token it started with; this client
    // reconnects itself instead, with a fresh token, the last seq and its backoff.
    source.addEventListener("error", () => end() && this._failed(wasOpen));
    this._close = () => end();
  }

  _poll(token) {
    const controller = new AbortController();
    let wasOpen = false;
    let current = token;
    const loop = async () => {
      while (this.running && !controller.signal.aborted) {
        const url = this._url("/api/v1/inbox/poll/", { after: this.lastSeq });
        const response = await fetch(url, {
          headers: { Authorization: `Bearer ${current}`, Accept: "application/json" },
          credentials: "omit",
          signal: controller.signal,
        });
        if (response.status === 401 && this.getToken) {
          current = await this._token(true);
          continue;
        }
        if (!response.ok) throw new Error(`poll answered ${response.status}`);
        const body = await response.json();
        if (!wasOpen) {
          wasOpen = true;
          this._opened();
        }
        for (const item of body.results) this._notification(item.seq, item);
        this._emit("unread", { count: body.unread_count });
      }
    };
    loop().catch((error) => {
      if (controller.signal.aborted) return;
      console.warn("inbox long-poll failed", error);
      this._failed(wasOpen);
    });
    this._close = () => controller.abort();
  }
}
