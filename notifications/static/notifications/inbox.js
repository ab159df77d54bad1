// The live inbox: one websocket (session cookie), resumed by seq after every reconnect,
// so the list shows each notification once and in order even across network drops.
// No dependencies; loaded as an ES module by notifications/inbox.html.

const PING_INTERVAL_MS = 25_000;
const BACKOFF_START_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
// The server refused our credentials or origin: retrying cannot help.
const FATAL_CLOSE_CODES = new Set([4401, 4403]);

const root = document.getElementById("inbox");
const list = document.getElementById("inbox-items");
const empty = document.getElementById("inbox-empty");
const badge = document.getElementById("unread-badge");
const statusEl = document.getElementById("socket-status");
const markAllButton = document.getElementById("mark-all-read");

let lastSeq = Number(root.dataset.lastSeq || 0);
let socket = null;
let pingTimer = null;
let attempt = 0;

function cookie(name) {
  const prefix = `${name}=`;
  for (const part of document.cookie.split(";")) {
    const trimmed = part.trim();
    if (trimmed.startsWith(prefix)) return decodeURIComponent(trimmed.slice(prefix.length));
  }
  return "";
}

async function post(url) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRFToken": cookie("csrftoken"), Accept: "application/json" },
  });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return response.json();
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function setUnread(count) {
  const n = Math.max(0, Number(count) || 0);
  badge.textContent = String(n);
  badge.classList.toggle("hidden", n === 0);
  document.title = n ? `Inbox (${n})` : "Inbox";
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function renderItem(item) {
  const li = document.createElement("li");
  li.className = item.read ? "item" : "item unread";
  li.dataset.id = String(item.id);
  li.dataset.seq = String(item.seq);
  li.dataset.accepted = item.accepted_at;
  li.dataset.url = item.url || "";
  li.tabIndex = 0;

  const title = document.createElement("div");
  title.className = "item-title";
  title.textContent = item.title;
  li.append(title);

  if (item.body) {
    const body = document.createElement("div");
    body.className = "item-body";
    body.textContent = item.body;
    li.append(body);
  }

  const meta = document.createElement("div");
  meta.className = "item-meta";
  const type = document.createElement("span");
  type.className = "item-type";
  type.textContent = item.type;
  const time = document.createElement("time");
  time.dateTime = item.accepted_at;
  time.textContent = formatTime(item.accepted_at);
  meta.append(type, time);
  li.append(meta);
  return li;
}

function addItem(seq, item) {
  if (list.querySelector(`[data-seq="${seq}"]`)) return;
  const li = renderItem(item);
  li.classList.add("fresh");
  // Newest first by when the event was accepted, as the server lists them (seq only
  // breaks ties: it follows the order items were written in, which can differ).
  const accepted = Date.parse(item.accepted_at);
  const next = [...list.children].find((el) => {
    const other = Date.parse(el.dataset.accepted);
    return other < accepted || (other === accepted && Number(el.dataset.seq) < seq);
  });
  list.insertBefore(li, next || null);
  empty.classList.add("hidden");
  lastSeq = Math.max(lastSeq, seq);
}

function markItemRead(li) {
  if (!li.classList.contains("unread")) return Promise.resolve();
  li.classList.remove("unread");
  setUnread(Number(badge.textContent) - 1);
  return post(`/api/v1/inbox/${li.dataset.id}/read/`).catch((error) => {
    li.classList.add("unread");
    console.warn("could not mark the item read", error);
  });
}

async function openItem(li) {
  await markItemRead(li);
  if (li.dataset.url) window.location.assign(li.dataset.url);
}

list.addEventListener("click", (event) => {
  const li = event.target.closest(".item");
  if (li) openItem(li);
});
list.addEventListener("keydown", (event) => {
  const li = event.target.closest(".item");
  if (li && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    openItem(li);
  }
});

markAllButton.addEventListener("click", async () => {
  markAllButton.disabled = true;
  try {
    const result = await post("/api/v1/inbox/read-all/");
    for (const li of list.querySelectorAll(".item.unread")) li.classList.remove("unread");
    setUnread(result.unread_count ?? 0);
  } catch (error) {
    console.warn("could not mark everything read", error);
  } finally {
    markAllButton.disabled = false;
  }
});

function handleFrame(frame) {
  switch (frame.type) {
    case "notification":
      addItem(frame.seq, frame.item);
      break;
    case "unread_count":
      setUnread(frame.count);
      break;
    case "pong":
      break;
    case "error":
      console.warn("the inbox socket rejected a frame", frame.errors);
      break;
    default:
      console.debug("ignoring an unknown frame", frame);
  }
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${window.location.host}/ws/inbox/`);

  socket.addEventListener("open", () => {
    attempt = 0;
    setStatus("live", "Live");
    // Everything after the newest item we show, in order; live ones follow.
    send({ type: "resume", after: lastSeq });
    pingTimer = window.setInterval(() => send({ type: "ping" }), PING_INTERVAL_MS);
  });

  socket.addEventListener("message", (event) => {
    try {
      handleFrame(JSON.parse(event.data));
    } catch (error) {
      console.warn("unreadable frame", error);
    }
  });

  socket.addEventListener("close", (event) => {
    window.clearInterval(pingTimer);
    socket = null;
    if (FATAL_CLOSE_CODES.has(event.code)) {
      setStatus("offline", "Signed out: reload the page");
      return;
    }
    // Exponential backoff with jitter, so a restarted server is not stampeded.
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    setStatus("offline", `Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    window.setTimeout(connect, delay);
  });
}

for (const time of list.querySelectorAll("time")) time.textContent = formatTime(time.dateTime);
connect();
