// The /play/ page (gaming/views.py): a ticket through the API, the match over its socket
// (gaming/consumers.py), the arena drawn on a canvas. The server decides everything. This
// page predicts its own player's movement with the server's own rule (``move`` of
// gaming/modes/arena.py, with the layout the server put in the page) and puts it right
// against every state's ``ack``; the other players are drawn 100 ms in the past,
// interpolated between the states received, so they move smoothly between ticks.
// Where the browser has WebRTC, state also comes over an unreliable, unordered data
// channel signalled on the match socket (gaming/services/rtc.py): a lost frame is simply
// superseded by the next one; the socket carries it when the channel is not there.
const root = document.getElementById("play");
const LAYOUT = JSON.parse(document.getElementById("arena-layout").textContent);
const ME = root.dataset.me;
const canvas = document.getElementById("arena");
const ctx = canvas.getContext("2d");
const statusLine = document.getElementById("status");
const findButton = document.getElementById("find");
const cancelButton = document.getElementById("cancel");
const overlay = document.getElementById("over");
const INTERPOLATION_MS = 100;
const INPUT_EVERY_MS = 50;
const INPUT_REPEAT_MS = 250;
const TICK_MS = 1000 / LAYOUT.tick_rate;

// --- the token and the API ------------------------------------------------------------

let token = null;

async function fetchToken() {
  const response = await fetch(root.dataset.tokenUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`could not get a token (${response.status})`);
  token = (await response.json()).token;
  return token;
}

async function api(method, url, body) {
  if (!token) await fetchToken();
  const call = () => fetch(url, {
    method,
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json", ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  let response = await call();
  if (response.status === 401) {
    await fetchToken();
    response = await call();
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  return { status: response.status, data };
}

function problems(data) {
  const errors = (data && data.errors) || {};
  return Object.entries(errors).map(([field, list]) => `${field}: ${[].concat(list).join(" ")}`).join("; ");
}

// --- the server's movement rule (gaming/modes/arena.py) ---------------------------------

function blocked(x, y, r) {
  if (!(r <= x && x <= LAYOUT.width - r && r <= y && y <= LAYOUT.height - r)) return true;
  for (const [wx, wy, ww, wh] of LAYOUT.walls) {
    const nx = Math.min(Math.max(x, wx), wx + ww);
    const ny = Math.min(Math.max(y, wy), wy + wh);
    if ((x - nx) ** 2 + (y - ny) ** 2 < r * r) return true;
  }
  return false;
}

function move(x, y, mx, my, dt) {
  const length = Math.hypot(mx, my);
  if (length > 1) { mx /= length; my /= length; }
  const nx = x + mx * LAYOUT.speed * dt;
  if (!blocked(nx, y, LAYOUT.radius)) x = nx;
  const ny = y + my * LAYOUT.speed * dt;
  if (!blocked(x, ny, LAYOUT.radius)) y = ny;
  return [x, y];
}

// --- deltas (gaming/modes/base.py apply_delta) ------------------------------------------

function applyDelta(before, changes) {
  const after = { ...before };
  for (const [key, value] of Object.entries(changes)) {
    const old = before[key];
    if (value && typeof value === "object" && !Array.isArray(value) && "set" in value && "del" in value && old && typeof old === "object") {
      const merged = {};
      for (const [id, fields] of Object.entries(old)) merged[id] = { ...fields };
      for (const id of value.del) delete merged[id];
      for (const [id, fields] of Object.entries(value.set)) merged[id] = { ...(merged[id] || {}), ...fields };
      after[key] = merged;
    } else {
      after[key] = value;
    }
  }
  return after;
}

// --- the match ----------------------------------------------------------------------------

let state = null; // the latest state from the server
let lastTick = -1; // its tick
let history = []; // [{at, state}] for drawing the others in the past
let pending = []; // inputs sent and not yet acknowledged: {seq, move, at}
let predicted = null; // where this player is drawn: [x, y]
let seq = 0;
let socket = null;
let match = null; // {id, socket}
let ended = false;
let ticket = null;
let lastFrameAt = performance.now();

function setPhase(phase, text) {
  root.dataset.state = phase;
  statusLine.textContent = text;
  findButton.hidden = phase === "searching" || phase === "playing";
  cancelButton.hidden = phase !== "searching";
}

async function find() {
  overlay.hidden = true;
  setPhase("searching", "Looking for players near your rating…");
  const { status, data } = await api("POST", root.dataset.tickets, { mode: "arena" });
  if (status !== 201) {
    // Already searching (from another tab, or before a reload): follow that ticket.
    const open = status === 400 ? await api("GET", root.dataset.tickets) : null;
    if (open && open.status === 200 && open.data.results.length) {
      await follow(open.data.results[0].id);
      return;
    }
    setPhase("idle", `Could not look for a match: ${problems(data) || status}`);
    return;
  }
  await follow(data.id);
}

async function follow(id) {
  ticket = id;
  setPhase("searching", "Looking for players near your rating…");
  const began = Date.now();
  while (ticket && root.dataset.state === "searching") {
    const seen = await api("GET", `${root.dataset.tickets}${ticket}/`);
    if (seen.status === 200 && seen.data.match) {
      join(seen.data.match);
      return;
    }
    if (seen.status === 200 && seen.data.status === "cancelled") break;
    statusLine.textContent = `Looking for players near your rating… ${Math.round((Date.now() - began) / 1000)} s`;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function cancel() {
  if (!ticket) return;
  const { status, data } = await api("DELETE", `${root.dataset.tickets}${ticket}/`);
  ticket = null;
  setPhase("idle", status === 200 ? "Stopped searching." : `The match was found already: ${problems(data)}`);
}

function join(found) {
  match = found;
  ticket = null;
  ended = false;
  state = null;
  lastTick = -1;
  history = [];
  pending = [];
  predicted = null;
  seq = 0;
  root.dataset.match = found.id;
  setPhase("playing", found.players.length ? `Match found: ${found.players.length} players. Connecting…` : "Back to your match. Connecting…");
  connect(0);
  canvas.focus();
}

function connect(attempt) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${match.socket}?token=${encodeURIComponent(token)}`);
  socket.onopen = () => { showTransport("socket"); rtcStart(); };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "state") onState(frame);
    else if (frame.type === "end") onEnd(frame);
    else if (frame.type === "rtc.answer") rtcAnswer(frame.sdp);
    else if (frame.type === "rtc.unavailable" || frame.type === "rtc.closed") rtcStop(false);
    else if (frame.type === "error") statusLine.textContent = `The server refused a message: ${frame.field}: ${frame.message}`;
  };
  socket.onclose = (event) => {
    rtcStop(false);
    if (ended || event.code === 4000) return;
    if (event.code === 4403 || event.code === 4404) {
      setPhase("idle", "This match is not yours to join.");
      return;
    }
    // Back within the grace period: the server sends the whole state again.
    statusLine.textContent = "Connection lost; reconnecting…";
    setTimeout(async () => { await fetchToken().catch(() => null); connect(attempt + 1); }, Math.min(4000, 250 * 2 ** attempt));
  };
}

// --- state over a WebRTC data channel ------------------------------------------------------

let rtc = null; // {pc, channel, states: Map of tick -> whole state}

function gathered(pc, ms) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

const transportLine = document.getElementById("transport");

function showTransport(via) {
  root.dataset.transport = via;
  transportLine.hidden = false;
  transportLine.dataset.via = via;
  transportLine.textContent = via === "rtc" ? "Live over a WebRTC data channel" : "Live over the WebSocket";
}

function rtcStart() {
  if (rtc || !LAYOUT.rtc || !LAYOUT.rtc.enabled || typeof RTCPeerConnection === "undefined") return;
  const pc = new RTCPeerConnection({ iceServers: LAYOUT.rtc.ice_servers });
  // Negotiated with id 0 on both ends; the server sends unordered, without retransmits.
  const channel = pc.createDataChannel("state", { negotiated: true, id: 0, ordered: false, maxRetransmits: 0 });
  const current = { pc, channel, states: new Map() };
  rtc = current;
  channel.onopen = () => { if (rtc === current) showTransport("rtc"); };
  channel.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (rtc !== current || frame.type !== "state") return;
    let whole = frame.state;
    if (!whole) {
      const base = current.states.get(frame.base);
      if (!base) return; // a delta from a state this page never got: the next frame will do
      whole = applyDelta(base, frame.delta);
    }
    current.states.set(frame.tick, whole);
    for (const tick of current.states.keys()) if (tick < frame.tick - 60) current.states.delete(tick);
    // Said for every state: the server builds its next delta from the newest one it hears of.
    if (channel.readyState === "open") channel.send(JSON.stringify({ type: "seen", tick: frame.tick }));
    onState({ tick: frame.tick, ack: frame.ack, state: whole });
  };
  pc.onconnectionstatechange = () => { if (pc.connectionState === "failed") rtcStop(true); };
  (async () => {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 2000); // the offer carries the candidates: no trickling needed
    if (rtc === current && socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "rtc.offer", sdp: pc.localDescription.sdp }));
    }
  })().catch(() => rtcStop(false));
}

function rtcAnswer(sdp) {
  if (rtc) rtc.pc.setRemoteDescription({ type: "answer", sdp }).catch(() => rtcStop(true));
}

function rtcStop(tellServer) {
  if (!rtc) return;
  const { pc } = rtc;
  rtc = null;
  showTransport("socket");
  if (tellServer && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "rtc.close" }));
  pc.close();
}

function onState(frame) {
  // The channel and the socket may both bring a tick while one takes over from the other.
  if (frame.tick <= lastTick) return;
  if (frame.state) state = frame.state;
  else if (state) state = applyDelta(state, frame.delta);
  else return;
  lastTick = frame.tick;
  const now = performance.now();
  history.push({ at: now, state });
  while (history.length > 2 && now - history[1].at > 1000) history.shift();
  root.dataset.tick = frame.tick;
  root.dataset.positions = JSON.stringify(Object.fromEntries(Object.entries(state.players).map(([id, p]) => [id, [p.x, p.y]])));
  // Put the prediction right: the server's position, then what it has not applied yet.
  pending = pending.filter((input) => input.seq > frame.ack);
  const mine = state.players[ME];
  if (mine) {
    let [x, y] = [mine.x, mine.y];
    if (mine.alive) {
      pending.forEach((input, index) => {
        const until = index + 1 < pending.length ? pending[index + 1].at : now;
        for (let left = (until - input.at) / 1000; left > 0; left -= TICK_MS / 1000) {
          [x, y] = move(x, y, input.move[0], input.move[1], Math.min(left, TICK_MS / 1000));
        }
      });
    }
    predicted = [x, y];
  }
  if (root.dataset.state === "playing") statusLine.textContent = mine && !mine.alive ? "Eliminated: back in a moment." : "Playing.";
  showScore();
}

function ordinal(n) {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

function onEnd(frame) {
  ended = true;
  socket && socket.close();
  const list = document.getElementById("standings");
  list.replaceChildren();
  if (frame.aborted) {
    document.getElementById("over-title").textContent = "Match aborted";
    const item = document.createElement("li");
    item.textContent = `${frame.reason || "The match could not go on"}. No rating changed.`;
    list.append(item);
  } else {
    const standings = frame.result.standings;
    const mine = standings.find((s) => s.player === ME);
    const winners = standings.filter((s) => s.rank === 1).length;
    document.getElementById("over-title").textContent =
      mine && mine.rank === 1 ? (winners > 1 ? "A draw" : "You won!") : `Match over: you came ${ordinal(mine ? mine.rank : standings.length)}`;
    for (const s of standings) {
      const item = document.createElement("li");
      item.value = s.rank;
      item.textContent = `${s.player === ME ? "You" : s.player}: ${s.score} elimination${s.score === 1 ? "" : "s"}${s.forfeited ? " (left)" : ""}`;
      if (s.player === ME) item.classList.add("me");
      list.append(item);
    }
  }
  overlay.hidden = false;
  root.dataset.ended = "1";
  setPhase("idle", frame.aborted ? "The match was aborted." : "The match is over.");
  loadBoard();
}

// --- input -----------------------------------------------------------------------------

const keys = new Set();
let aim = 0;
let shooting = false;
let lastSent = { at: 0, key: "" };
const MOVES = { KeyW: [0, -1], ArrowUp: [0, -1], KeyS: [0, 1], ArrowDown: [0, 1], KeyA: [-1, 0], ArrowLeft: [-1, 0], KeyD: [1, 0], ArrowRight: [1, 0] };

window.addEventListener("keydown", (event) => {
  if (root.dataset.state !== "playing") return;
  if (event.code in MOVES || event.code === "Space") event.preventDefault();
  if (event.code === "Space") shooting = true;
  keys.add(event.code);
});
window.addEventListener("keyup", (event) => {
  if (event.code === "Space") shooting = false;
  keys.delete(event.code);
});
canvas.addEventListener("mousemove", (event) => {
  if (!predicted) return;
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * LAYOUT.width;
  const y = ((event.clientY - box.top) / box.height) * LAYOUT.height;
  aim = Math.atan2(y - predicted[1], x - predicted[0]);
});
canvas.addEventListener("mousedown", () => { shooting = true; canvas.focus(); });
window.addEventListener("mouseup", () => { shooting = false; });

function stick() {
  let [x, y] = [0, 0];
  for (const code of keys) if (code in MOVES) { x += MOVES[code][0]; y += MOVES[code][1]; }
  return [Math.max(-1, Math.min(1, x)), Math.max(-1, Math.min(1, y))];
}

setInterval(() => {
  if (!socket || socket.readyState !== WebSocket.OPEN || !state || ended) return;
  const stickNow = stick();
  const key = `${stickNow}|${aim.toFixed(2)}|${shooting}`;
  const now = performance.now();
  if (key === lastSent.key && now - lastSent.at < INPUT_REPEAT_MS) return;
  seq += 1;
  socket.send(JSON.stringify({ type: "input", seq, move: stickNow, aim: Math.round(aim * 1000) / 1000, shoot: shooting }));
  pending.push({ seq, move: stickNow, at: now });
  lastSent = { at: now, key };
}, INPUT_EVERY_MS);

// --- drawing -----------------------------------------------------------------------------

const PALETTE = ["#38bdf8", "#f472b6", "#a3e635", "#fb923c", "#c084fc", "#facc15", "#2dd4bf", "#f87171", "#818cf8", "#e879f9"];

function colour(id) {
  // By the player's place among the match's players: ten players, ten colours.
  const ids = state ? Object.keys(state.players).sort() : [id];
  return PALETTE[Math.max(0, ids.indexOf(id)) % PALETTE.length];
}

function interpolated(id, at) {
  for (let i = history.length - 1; i > 0; i -= 1) {
    const [a, b] = [history[i - 1], history[i]];
    if (a.at <= at && at <= b.at && a.state.players[id] && b.state.players[id]) {
      const t = (at - a.at) / Math.max(1, b.at - a.at);
      const [pa, pb] = [a.state.players[id], b.state.players[id]];
      return [pa.x + (pb.x - pa.x) * t, pa.y + (pb.y - pa.y) * t];
    }
  }
  const p = state.players[id];
  return [p.x, p.y];
}

function draw(now) {
  const dt = Math.min(0.1, (now - lastFrameAt) / 1000);
  lastFrameAt = now;
  const mine = state && state.players[ME];
  if (predicted && mine && mine.alive && !ended) predicted = move(predicted[0], predicted[1], ...stick(), dt);
  ctx.fillStyle = "#0f172a";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "rgba(148, 163, 184, .08)";
  ctx.lineWidth = 1;
  for (let x = 0; x <= LAYOUT.width; x += 50) { ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, LAYOUT.height); ctx.stroke(); }
  for (let y = 0; y <= LAYOUT.height; y += 50) { ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(LAYOUT.width, y); ctx.stroke(); }
  ctx.fillStyle = "#334155";
  for (const [x, y, w, h] of LAYOUT.walls) ctx.fillRect(x, y, w, h);
  if (!state) {
    ctx.fillStyle = "#94a3b8";
    ctx.font = "600 28px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(root.dataset.state === "searching" ? "Finding players…" : "Find a match to play", LAYOUT.width / 2, LAYOUT.height / 2);
    requestAnimationFrame(draw);
    return;
  }
  for (const pickup of Object.values(state.pickups)) {
    if (!pickup.up) continue;
    ctx.fillStyle = "#22c55e";
    ctx.fillRect(pickup.x - 10, pickup.y - 3, 20, 6);
    ctx.fillRect(pickup.x - 3, pickup.y - 10, 6, 20);
  }
  const since = history.length ? (now - history[history.length - 1].at) / 1000 : 0;
  ctx.fillStyle = "#fde68a";
  for (const bullet of Object.values(state.bullets)) {
    ctx.beginPath();
    ctx.arc(bullet.x + bullet.vx * since, bullet.y + bullet.vy * since, 3, 0, Math.PI * 2);
    ctx.fill();
  }
  for (const [id, player] of Object.entries(state.players)) {
    if (player.left) continue;
    const [x, y] = id === ME && predicted ? predicted : interpolated(id, now - INTERPOLATION_MS);
    ctx.globalAlpha = player.alive ? 1 : 0.25;
    ctx.fillStyle = colour(id);
    ctx.beginPath();
    ctx.arc(x, y, LAYOUT.radius, 0, Math.PI * 2);
    ctx.fill();
    if (id === ME) { ctx.strokeStyle = "#f8fafc"; ctx.lineWidth = 3; ctx.stroke(); }
    const facing = id === ME ? aim : player.aim;
    ctx.strokeStyle = "#e2e8f0";
    ctx.lineWidth = 4;
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + Math.cos(facing) * (LAYOUT.radius + 10), y + Math.sin(facing) * (LAYOUT.radius + 10));
    ctx.stroke();
    ctx.fillStyle = "#1e293b";
    ctx.fillRect(x - 20, y - LAYOUT.radius - 14, 40, 5);
    ctx.fillStyle = player.hp > 30 ? "#4ade80" : "#f87171";
    ctx.fillRect(x - 20, y - LAYOUT.radius - 14, (40 * player.hp) / LAYOUT.max_health, 5);
    ctx.fillStyle = "#e2e8f0";
    ctx.font = "600 18px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(id === ME ? "You" : id, x, y + LAYOUT.radius + 22);
    ctx.globalAlpha = 1;
  }
  requestAnimationFrame(draw);
}

function showScore() {
  const seconds = Math.ceil(state.time_left);
  document.getElementById("clock").textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  const rows = Object.entries(state.players).sort(([, a], [, b]) => b.kills - a.kills || a.deaths - b.deaths).map(([id, p]) => {
    const row = document.createElement("tr");
    if (id === ME) row.classList.add("me");
    const name = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(id);
    name.append(swatch, id === ME ? "You" : id + (p.left ? " (left)" : ""));
    const cells = [p.hp, p.kills, p.deaths].map((value) => { const cell = document.createElement("td"); cell.textContent = value; return cell; });
    row.append(name, ...cells);
    return row;
  });
  document.getElementById("score").replaceChildren(...rows);
}

async function loadBoard() {
  const list = document.getElementById("board");
  let { status, data } = await api("GET", `${root.dataset.leaderboard}?around=${encodeURIComponent(ME)}&limit=10`);
  const ranked = status === 200;
  if (!ranked) ({ status, data } = await api("GET", `${root.dataset.leaderboard}?limit=10`));
  if (status !== 200) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "The leaderboard is unavailable." }));
    return;
  }
  const items = data.results.map((place) => {
    const item = document.createElement("li");
    if (place.player === ME) item.classList.add("me");
    const who = document.createElement("span");
    who.textContent = `${place.rank}. ${place.player === ME ? "You" : place.player}`;
    const rating = document.createElement("span");
    rating.textContent = place.rating.toFixed(1);
    item.append(who, rating);
    return item;
  });
  if (!items.length) items.push(Object.assign(document.createElement("li"), { className: "muted", textContent: "Nobody has played yet." }));
  if (!ranked) items.push(Object.assign(document.createElement("li"), { className: "muted", textContent: "Play a match to get a rating." }));
  list.replaceChildren(...items);
}

findButton.addEventListener("click", () => find().catch((error) => setPhase("idle", `Something went wrong: ${error.message}`)));
cancelButton.addEventListener("click", () => cancel());
document.getElementById("again").addEventListener("click", () => find().catch((error) => setPhase("idle", `Something went wrong: ${error.message}`)));
// Back on the page (a reload, the link of a "match found" notification) while a match of
// this player's is on: straight back into it.
async function resume() {
  const { status, data } = await api("GET", `/api/v1/players/${encodeURIComponent(ME)}/matches/`);
  const current = status === 200 && data.results.find((m) => m.status === "running" || m.status === "assigned");
  if (current) {
    join({ id: current.match, socket: `/ws/matches/${current.match}/`, players: [] });
    return;
  }
  // Or still searching: follow that ticket again (and it can be cancelled).
  const open = await api("GET", root.dataset.tickets);
  if (open.status === 200 && open.data.results.length) follow(open.data.results[0].id);
}

fetchToken()
  .then(() => Promise.all([loadBoard(), resume()]))
  .catch((error) => setPhase("idle", `Could not sign in to the game: ${error.message}`));
requestAnimationFrame(draw);
