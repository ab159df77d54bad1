// The viewer's page of a stream, /live/{key}/ (streaming/views.py): the player, the stream's
// status and viewer count, the Follow button and the chat.
//
// The player is hls.js on the stream's HLS master playlist (the ladder: source, 480p, 360p),
// choosing the rendition by itself (Auto) unless the viewer picks one. It plays while the
// stream is live and stops when it goes offline. The status comes from the stream API
// (GET /api/v1/streams/{key}/) for a signed-in viewer, and, for a visitor, who has no token
// for the API, from the master playlist itself: it exists while the ladder is being written
// and is removed when the stream goes offline.
//
// The chat is the socket /ws/streams/{key}/chat/ (streaming/consumers.py): with ?token= for
// a signed-in viewer, who may post; without, a reader. Every (re)connect begins with the
// history, which replaces what the list shows. Chat text is user input: it only ever goes
// into the page as text (textContent), never as HTML.
import { Hls } from "./vendor/hls.js";

const CONFIG = JSON.parse(document.getElementById("live-config").textContent);
const root = document.getElementById("live");
const video = document.getElementById("video");
const badge = document.getElementById("badge");
const viewersOut = document.getElementById("viewers");
const cover = document.getElementById("cover");
const coverTitle = document.getElementById("cover-title");
const coverText = document.getElementById("cover-text");
const unmuteButton = document.getElementById("unmute");
const qualitySelect = document.getElementById("quality");
const playingOut = document.getElementById("playing");
const followButton = document.getElementById("follow");
const followNote = document.getElementById("follow-note");
const chatState = document.getElementById("chat-state");
const chatList = document.getElementById("chat-messages");
const chatEmpty = document.getElementById("chat-empty");
const chatForm = document.getElementById("chat-form");
const chatInput = document.getElementById("chat-input");
const chatSend = document.getElementById("chat-send");
const chatError = document.getElementById("chat-error");
const chatHint = document.getElementById("chat-hint");

const STATUS_EVERY_MS = 5_000;
const PING_EVERY_MS = 25_000;
const PLAYER_RETRY_MS = 3_000;
const BACKOFF_START_MS = 1_000;
const BACKOFF_MAX_MS = 15_000;
// Messages kept in the list; older ones scroll away (the socket's history holds 50).
const CHAT_KEEP = 200;
// Close codes of the chat socket (realtime/auth.py, streaming/consumers.py).
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_FORBIDDEN_ORIGIN = 4403;
const CLOSE_NO_STREAM = 4404;

// --- the token and the API ----------------------------------------------------------------

let token = null;
let tokenRequest = null; // one request at a time: the status poll and the socket both ask

class SignedOut extends Error {}

function fetchToken() {
  tokenRequest ??= (async () => {
    const response = await fetch(CONFIG.token_url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401 || response.status === 404) throw new SignedOut(`token: ${response.status}`);
    if (!response.ok) throw new Error(`token: ${response.status}`);
    token = (await response.json()).token;
    return token;
  })().finally(() => {
    tokenRequest = null;
  });
  return tokenRequest;
}

async function api(method, url) {
  if (!token) await fetchToken();
  const call = () => fetch(url, { method, headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
  let response = await call();
  if (response.status === 401) {
    await fetchToken();
    response = await call();
  }
  const data = await response.json().catch(() => null);
  return { status: response.status, data };
}

function problems(data, fallback) {
  const errors = (data && data.errors) || {};
  const text = Object.entries(errors).map(([field, list]) => `${field}: ${[].concat(list).join(" ")}`).join("; ");
  return text || (data && data.detail) || fallback;
}

// --- status and viewers ---------------------------------------------------------------------

let status = null;

function setStatus(next) {
  if (next !== "live" && next !== "offline") return;
  if (next === status) return;
  status = next;
  root.dataset.status = next;
  badge.dataset.status = next;
  badge.textContent = next === "live" ? "LIVE" : "Offline";
  if (next === "live") startPlayer();
  else stopPlayer();
}

function setViewers(count) {
  if (!Number.isInteger(count) || count < 0) return;
  viewersOut.dataset.count = String(count);
  viewersOut.textContent = count.toLocaleString();
  viewersOut.parentElement.title = `${count.toLocaleString()} watching now`;
}

async function readStatus() {
  if (CONFIG.token_url) {
    const { status: code, data } = await api("GET", CONFIG.api_url);
    if (code !== 200 || !data) throw new Error(`stream: ${code}`);
    setViewers(data.viewers);
    return data.status;
  }
  // A visitor: the master playlist is there while the stream is live (its HLS is public).
  const response = await fetch(CONFIG.hls_url, { cache: "no-store", method: "GET" });
  if (response.ok) return "live";
  if (response.status === 404) return "offline";
  throw new Error(`master playlist: ${response.status}`);
}

async function pollStatus() {
  try {
    setStatus(await readStatus());
  } catch (error) {
    if (error instanceof SignedOut) {
      // Logged out in another tab: go on as a visitor.
      CONFIG.token_url = null;
      token = null;
    }
  } finally {
    window.setTimeout(pollStatus, STATUS_EVERY_MS);
  }
}

// --- the player -------------------------------------------------------------------------------

let hls = null;
let retryTimer = null;

function showCover(title, text) {
  coverTitle.textContent = title;
  coverText.textContent = text;
  cover.hidden = false;
}

function startPlayer() {
  window.clearTimeout(retryTimer);
  if (hls) return;
  showCover("Connecting to the stream…", "The picture appears in a moment.");
  if (Hls.isSupported()) {
    hls = new Hls({ workerPath: root.dataset.worker, liveDurationInfinity: true, backBufferLength: 30 });
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      fillQualities();
      play();
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, showPlaying);
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      // The ladder is not there (yet, or any more): try again while the stream is live.
      stopPlayer();
      if (status === "live") {
        showCover("Reconnecting to the stream…", "The picture comes back in a moment.");
        retryTimer = window.setTimeout(startPlayer, PLAYER_RETRY_MS);
      }
    });
    hls.loadSource(CONFIG.hls_url);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    // Safari plays HLS itself (and adapts by itself: the menu offers Auto only).
    video.src = CONFIG.hls_url;
    play();
  } else {
    showCover("This browser cannot play the stream", "It supports neither Media Source Extensions nor HLS.");
  }
}

function stopPlayer() {
  window.clearTimeout(retryTimer);
  if (hls) {
    hls.destroy();
    hls = null;
  }
  video.removeAttribute("src");
  video.load();
  resetQualities();
  if (status !== "live") {
    showCover(`${ownerName()} is offline`, "This page starts playing by itself when the stream goes live.");
  }
}

function ownerName() {
  return document.querySelector(".live-owner").textContent.trim();
}

function play() {
  video.play().catch(() => {
    // Autoplay refused even muted (a browser setting): the controls start it.
  });
}

video.addEventListener("playing", () => {
  cover.hidden = true;
  root.dataset.playing = "true";
});
video.addEventListener("waiting", () => {
  root.dataset.playing = "false";
});
video.addEventListener("volumechange", () => {
  unmuteButton.hidden = !video.muted;
});
unmuteButton.hidden = !video.muted;
unmuteButton.addEventListener("click", () => {
  video.muted = false;
  if (video.volume === 0) video.volume = 1;
  play();
});

// --- the quality menu -----------------------------------------------------------------------

function renditionOf(level) {
  // The ladder's playlists are <rendition>/index.m3u8 (streaming/services/media.py).
  const path = new URL(level.uri || level.url[0], CONFIG.hls_url).pathname.split("/");
  return path[path.length - 2] || `${level.height}p`;
}

function levelLabel(level) {
  const rendition = renditionOf(level);
  if (rendition === "source") return level.height ? `${level.height}p (source)` : "Source";
  return level.height ? `${level.height}p` : rendition;
}

function fillQualities() {
  resetQualities();
  const order = hls.levels.map((level, index) => ({ level, index })).sort((a, b) => b.level.height - a.level.height || b.level.bitrate - a.level.bitrate);
  for (const { level, index } of order) {
    const option = document.createElement("option");
    option.value = String(index);
    option.dataset.rendition = renditionOf(level);
    option.textContent = levelLabel(level);
    qualitySelect.append(option);
  }
  qualitySelect.value = "-1";
  qualitySelect.disabled = order.length === 0;
}

function resetQualities() {
  for (const option of [...qualitySelect.options]) {
    if (option.value !== "-1") option.remove();
  }
  qualitySelect.options[0].textContent = "Auto";
  qualitySelect.value = "-1";
  qualitySelect.disabled = true;
  playingOut.textContent = "";
  delete root.dataset.level;
}

function showPlaying() {
  if (!hls || hls.currentLevel < 0) return;
  const level = hls.levels[hls.currentLevel];
  if (!level) return;
  root.dataset.level = renditionOf(level);
  const auto = hls.autoLevelEnabled;
  qualitySelect.options[0].textContent = auto ? `Auto (${levelLabel(level)})` : "Auto";
  playingOut.textContent = `${level.width}×${level.height} · ${Math.round(level.bitrate / 1000).toLocaleString()} kbit/s`;
}

qualitySelect.addEventListener("change", () => {
  if (!hls) return;
  // -1 is Auto: hls.js measures the bandwidth and switches by itself.
  hls.currentLevel = Number(qualitySelect.value);
  showPlaying();
});

// --- following ---------------------------------------------------------------------------------

let following = Boolean(CONFIG.following);

function showFollowing() {
  followButton.setAttribute("aria-pressed", String(following));
  followButton.textContent = following ? "Following" : "Follow";
  followButton.title = following ? "Stop following" : "Be told when this stream goes live";
}

async function toggleFollow() {
  followButton.disabled = true;
  followNote.textContent = "";
  try {
    const { status: code, data } = await api(following ? "DELETE" : "POST", CONFIG.follow_url);
    if (code === 200 && data) {
      following = data.following;
      showFollowing();
      followNote.textContent = following ? "You will be told when it goes live." : "";
    } else {
      followNote.textContent = problems(data, `Could not ${following ? "unfollow" : "follow"} (${code}).`);
    }
  } catch (error) {
    followNote.textContent = error instanceof SignedOut ? "Log in again to follow." : "Could not reach the server; try again.";
  } finally {
    followButton.disabled = false;
  }
}

if (followButton) {
  showFollowing();
  followButton.addEventListener("click", toggleFollow);
}

// --- the chat -----------------------------------------------------------------------------------

const names = new Map(); // external id -> display name, from the messages seen
let socket = null;
let pingTimer = null;
let backoff = BACKOFF_START_MS;
let canPost = false;
let slowModeSeconds = 0;
// The text last sent: put back in the input when the server refuses it (an error frame).
let lastSent = "";

function setChatState(state, text) {
  chatState.dataset.state = state;
  chatState.textContent = text;
  if (chatInput) {
    chatInput.disabled = state !== "live" || !canPost;
    chatSend.disabled = chatInput.disabled;
  }
}

function timeOf(ts) {
  const when = new Date(ts);
  return Number.isNaN(when.getTime()) ? "" : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function atBottom() {
  return chatList.scrollHeight - chatList.scrollTop - chatList.clientHeight < 40;
}

function append(item) {
  const follow = atBottom();
  chatEmpty.hidden = true;
  chatList.append(item);
  while (chatList.children.length > CHAT_KEEP + 1) chatList.children[1].remove();
  if (follow) chatList.scrollTop = chatList.scrollHeight;
}

function messageItem(message) {
  names.set(message.author, message.name || message.author);
  const item = document.createElement("li");
  item.className = "chat-message";
  item.dataset.id = String(message.id);
  if (message.author === CONFIG.me) item.classList.add("mine");
  const time = document.createElement("time");
  time.dateTime = message.ts;
  time.textContent = timeOf(message.ts);
  const author = document.createElement("span");
  author.className = "chat-author";
  author.textContent = message.name || message.author;
  author.title = message.author;
  const text = document.createElement("span");
  text.className = "chat-text";
  text.textContent = message.text;
  item.append(time, author, text);
  return item;
}

function systemItem(text) {
  const item = document.createElement("li");
  item.className = "chat-system";
  item.textContent = text;
  return item;
}

function who(externalId) {
  if (externalId === CONFIG.me) return "You";
  return names.get(externalId) || externalId;
}

function moderationText(frame) {
  switch (frame.action) {
    case "mute":
      return `${who(frame.target)} ${frame.target === CONFIG.me ? "were" : "was"} muted for ${frame.minutes} min.`;
    case "ban":
      return `${who(frame.target)} ${frame.target === CONFIG.me ? "were" : "was"} banned from the chat.`;
    case "unban":
      return `${who(frame.target)} may chat again.`;
    case "moderator_add":
      return `${who(frame.target)} ${frame.target === CONFIG.me ? "now moderate" : "now moderates"} the chat.`;
    case "moderator_remove":
      return `${who(frame.target)} no longer ${frame.target === CONFIG.me ? "moderate" : "moderates"} the chat.`;
    case "slow_mode":
      return frame.seconds > 0 ? `Slow mode is on: one message every ${frame.seconds} s.` : "Slow mode is off.";
    default:
      return null;
  }
}

function showSlowMode(seconds) {
  slowModeSeconds = Number(seconds) || 0;
  if (chatHint) chatHint.textContent = slowModeSeconds > 0 ? `Slow mode: one message every ${slowModeSeconds} s.` : "";
}

function showError(field, message) {
  if (!chatError) return;
  chatError.dataset.field = field;
  chatError.textContent = message;
  chatError.hidden = false;
  chatInput.setAttribute("aria-invalid", "true");
}

function clearError() {
  if (!chatError) return;
  chatError.hidden = true;
  chatError.textContent = "";
  delete chatError.dataset.field;
  chatInput.removeAttribute("aria-invalid");
}

function onFrame(frame) {
  switch (frame.type) {
    case "history": {
      for (const item of [...chatList.querySelectorAll(".chat-message, .chat-system")]) item.remove();
      for (const message of frame.messages || []) append(messageItem(message));
      chatEmpty.hidden = (frame.messages || []).length > 0;
      chatList.scrollTop = chatList.scrollHeight;
      showSlowMode(frame.slow_mode_seconds);
      break;
    }
    case "message":
      if (frame.author === CONFIG.me && frame.text === lastSent.trim()) lastSent = "";
      if (!chatList.querySelector(`[data-id="${CSS.escape(String(frame.id))}"]`)) append(messageItem(frame));
      break;
    case "deleted": {
      const item = chatList.querySelector(`[data-id="${CSS.escape(String(frame.id))}"]`);
      if (item) item.remove();
      chatEmpty.hidden = chatList.querySelector(".chat-message, .chat-system") !== null;
      break;
    }
    case "viewers":
      setViewers(frame.count);
      break;
    case "moderation": {
      if (frame.action === "slow_mode") showSlowMode(frame.seconds);
      const text = moderationText(frame);
      if (text) append(systemItem(text));
      break;
    }
    case "error":
      showError(String(frame.field || ""), String(frame.message || "The server refused the message."));
      if (chatInput && !chatInput.value && lastSent) chatInput.value = lastSent;
      lastSent = "";
      break;
    default:
      break; // pong, and frame types this page does not know yet
  }
}

async function socketUrl() {
  const url = new URL(CONFIG.chat_socket, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  canPost = false;
  if (CONFIG.token_url) {
    try {
      url.searchParams.set("token", await fetchToken());
      canPost = true;
    } catch (error) {
      if (error instanceof SignedOut) CONFIG.token_url = null;
      else throw error;
    }
  }
  return url.href;
}

function reconnectLater() {
  const delay = Math.min(backoff, BACKOFF_MAX_MS) * (0.75 + Math.random() * 0.5);
  backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  setChatState("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)} s…`);
  window.setTimeout(connectChat, delay);
}

async function connectChat() {
  setChatState("connecting", "Connecting…");
  let url;
  try {
    url = await socketUrl();
  } catch {
    reconnectLater();
    return;
  }
  socket = new WebSocket(url);
  socket.addEventListener("open", () => {
    backoff = BACKOFF_START_MS;
    setChatState("live", canPost ? "Connected" : "Read only");
    pingTimer = window.setInterval(() => socket.readyState === WebSocket.OPEN && socket.send(JSON.stringify({ type: "ping" })), PING_EVERY_MS);
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame && typeof frame === "object") onFrame(frame);
  });
  socket.addEventListener("close", (event) => {
    window.clearInterval(pingTimer);
    socket = null;
    if (event.code === CLOSE_NO_STREAM) {
      setChatState("closed", "This stream no longer exists.");
      return;
    }
    if (event.code === CLOSE_UNAUTHORIZED || event.code === CLOSE_FORBIDDEN_ORIGIN) token = null;
    reconnectLater();
  });
}

if (chatForm) {
  chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = chatInput.value;
    if (!text.trim()) {
      showError("text", "Write something: the message is empty (or only spaces).");
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("connection", "Not connected to the chat; the message was not sent. It reconnects by itself.");
      return;
    }
    clearError();
    socket.send(JSON.stringify({ type: "message", text }));
    lastSent = text;
    chatInput.value = "";
    chatInput.focus();
  });
  chatInput.addEventListener("input", clearError);
}

// --- start ------------------------------------------------------------------------------------

setStatus(CONFIG.status);
pollStatus();
connectChat();
