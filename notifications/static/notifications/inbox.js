// The /inbox/ page (notifications/inbox.html) on the inbox client (inbox-client.js): the
// list newest first with infinite scroll, unread badge, read / unread, archive, snooze, and
// every change made in another tab or device shown live. No dependencies.

import { InboxClient } from "./inbox-client.js";

const root = document.getElementById("inbox");
const list = document.getElementById("inbox-items");
const empty = document.getElementById("inbox-empty");
const badge = document.getElementById("unread-badge");
const statusEl = document.getElementById("socket-status");
const markAllButton = document.getElementById("mark-all-read");
const loadOlder = document.getElementById("load-older");
const more = document.getElementById("inbox-more");
const announcer = document.getElementById("inbox-announcer");
const tabs = [...document.querySelectorAll(".tab")];

const PAGE_SIZE = Number(root.dataset.pageSize || 50);
const TRANSPORT_NAMES = { websocket: "WebSocket", sse: "server-sent events", poll: "long-polling" };

// ?transport=sse (or poll) starts there: for trying a fallback by hand.
const asked = new URLSearchParams(window.location.search).get("transport");
const order = ["websocket", "sse", "poll"];
const transports = order.includes(asked) ? order.slice(order.indexOf(asked)) : order;

const client = new InboxClient({
  getToken: async () => {
    const response = await fetch(root.dataset.tokenUrl, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`token: ${response.status}`);
    return (await response.json()).token;
  },
  lastSeq: Number(root.dataset.lastSeq || 0),
  transports,
});

let view = "inbox"; // or "archived"
let loading = false;
let exhausted = loadOlder.classList.contains("hidden");

// --- rendering ------------------------------------------------------------------------

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function setUnread(count) {
  const n = Math.max(0, Number(count) || 0);
  badge.textContent = String(n);
  badge.setAttribute("aria-label", `${n} unread`);
  badge.classList.toggle("hidden", n === 0);
  document.title = n ? `Inbox (${n})` : "Inbox";
}

function announce(text) {
  announcer.textContent = "";
  window.setTimeout(() => (announcer.textContent = text), 50);
}

function actionButton(label, action, text = label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon-button";
  button.dataset.action = action;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  return button;
}

function snoozeMenu(title) {
  const wrap = document.createElement("span");
  wrap.className = "snooze-menu";
  const toggle = actionButton(`Snooze: ${title}`, "snooze-menu", "Snooze");
  toggle.setAttribute("aria-haspopup", "true");
  toggle.setAttribute("aria-expanded", "false");
  const menu = document.createElement("ul");
  menu.hidden = true;
  for (const [label, when] of snoozeChoices()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = "snooze";
    button.dataset.until = when.toISOString();
    button.textContent = label;
    li.append(button);
    menu.append(li);
  }
  wrap.append(toggle, menu);
  return wrap;
}

function snoozeChoices() {
  const now = new Date();
  const inAnHour = new Date(now.getTime() + 60 * 60 * 1000);
  const tomorrow = new Date(now);
  tomorrow.setDate(now.getDate() + 1);
  tomorrow.setHours(9, 0, 0, 0);
  const nextWeek = new Date(tomorrow);
  nextWeek.setDate(tomorrow.getDate() + ((8 - tomorrow.getDay()) % 7 || 7) - 1);
  return [
    ["For an hour", inAnHour],
    ["Until tomorrow, 9:00", tomorrow],
    ["Until next Monday, 9:00", nextWeek],
  ];
}

function fillActions(li, item) {
  const actions = li.querySelector(".item-actions");
  actions.replaceChildren();
  const title = item.title || "notification";
  if (item.archived) {
    actions.append(actionButton(`Move back to inbox: ${title}`, "unarchive", "Unarchive"));
    return;
  }
  actions.append(
    item.read
      ? actionButton(`Mark unread: ${title}`, "unread", "Mark unread")
      : actionButton(`Mark read: ${title}`, "read", "Mark read"),
    snoozeMenu(title),
    actionButton(`Archive: ${title}`, "archive", "Archive"),
  );
}

function renderItem(item) {
  const li = document.createElement("li");
  li.className = "item";
  li.innerHTML = `<button type="button" class="item-open"><span class="item-title"></span></button><span class="item-actions"></span>`;
  const open = li.querySelector(".item-open");
  if (item.body) {
    const body = document.createElement("span");
    body.className = "item-body";
    open.append(body);
  }
  const meta = document.createElement("span");
  meta.className = "item-meta";
  meta.innerHTML = `<span class="item-type"></span><time></time>`;
  open.append(meta);
  updateItem(li, item);
  return li;
}

function updateItem(li, item) {
  li.dataset.id = String(item.id);
  li.dataset.seq = String(item.seq);
  li.dataset.accepted = item.accepted_at;
  li.dataset.url = item.url || "";
  li.dataset.read = item.read ? "true" : "false";
  li.classList.toggle("unread", !item.read);
  li.querySelector(".item-title").textContent = item.title;
  const body = li.querySelector(".item-body");
  if (body) body.textContent = item.body;
  li.querySelector(".item-type").textContent = item.type;
  const time = li.querySelector("time");
  time.dateTime = item.accepted_at;
  time.textContent = formatTime(item.accepted_at);
  li.querySelector(".item-open").setAttribute("aria-label", `${item.read ? "" : "Unread: "}${item.title}`);
  li._item = item;
  fillActions(li, item);
}

function belongsHere(item) {
  const snoozed = item.snoozed_until && Date.parse(item.snoozed_until) > Date.now();
  return view === "archived" ? item.archived : !item.archived && !snoozed;
}

function findItem(id) {
  return list.querySelector(`.item[data-id="${id}"]`);
}

/** Put the item where it belongs (newest first by accepted_at, seq breaking ties), or take
 * it out of the list when it does not belong in this view any more. */
function place(item, { fresh = false, loaded = false } = {}) {
  let li = findItem(item.id);
  if (!belongsHere(item)) {
    if (li) li.remove();
    syncEmpty();
    return false;
  }
  if (li) updateItem(li, item);
  else li = renderItem(item);
  const accepted = Date.parse(item.accepted_at);
  const next = [...list.children].find((el) => {
    if (el === li) return false;
    const other = Date.parse(el.dataset.accepted);
    return other < accepted || (other === accepted && Number(el.dataset.seq) < item.seq);
  });
  // A live item older than everything loaded while more remain on the server: it will
  // come with the older pages (the pages themselves are ``loaded``).
  if (!loaded && !next && !exhausted && li.parentElement !== list && list.children.length) return false;
  if (li.nextElementSibling !== (next || null) || li.parentElement !== list) list.insertBefore(li, next || null);
  if (fresh) {
    li.classList.remove("fresh");
    void li.offsetWidth; // restart the highlight
    li.classList.add("fresh");
  }
  syncEmpty();
  return true;
}

function syncEmpty() {
  empty.textContent = view === "archived" ? "Nothing archived." : "You're all caught up.";
  empty.classList.toggle("hidden", list.children.length > 0);
}

// --- loading --------------------------------------------------------------------------

async function loadPage({ reset = false } = {}) {
  if (loading || (!reset && exhausted)) return;
  loading = true;
  loadOlder.disabled = true;
  try {
    const last = list.lastElementChild;
    const before = reset || !last ? null : Number(last.dataset.seq);
    const page = await client.list({ before, archived: view === "archived", limit: PAGE_SIZE });
    if (reset) list.replaceChildren();
    for (const item of page.results) place(item, { loaded: true });
    exhausted = page.results.length < PAGE_SIZE;
    loadOlder.classList.toggle("hidden", exhausted);
    if (view === "inbox") setUnread(page.unread_count);
  } catch (error) {
    console.warn("could not load the inbox", error);
  } finally {
    loading = false;
    loadOlder.disabled = false;
    syncEmpty();
  }
}

/** After a reconnect: item states may have changed meanwhile (another device read or
 * archived something); the newest page is read again and merged. */
async function refreshHead() {
  try {
    const page = await client.list({ archived: view === "archived", limit: PAGE_SIZE });
    const seen = new Set(page.results.map((item) => String(item.id)));
    for (const item of page.results) place(item, { loaded: true });
    // Items of the newest page's range that the server no longer lists left this view.
    const oldest = page.results.at(-1);
    for (const li of [...list.children]) {
      if (seen.has(li.dataset.id)) continue;
      if (!oldest || Date.parse(li.dataset.accepted) >= Date.parse(oldest.accepted_at)) li.remove();
    }
    if (view === "inbox") setUnread(page.unread_count);
    syncEmpty();
  } catch (error) {
    console.warn("could not refresh the inbox", error);
  }
}

function switchView(next) {
  if (next === view) return;
  view = next;
  for (const tab of tabs) tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  markAllButton.classList.toggle("hidden", view === "archived");
  exhausted = false;
  loadPage({ reset: true });
}

// --- what the user does ---------------------------------------------------------------

async function act(li, action, until) {
  const id = li.dataset.id;
  const calls = {
    read: () => client.markRead(id),
    unread: () => client.markUnread(id),
    archive: () => client.archive(id),
    unarchive: () => client.unarchive(id),
    snooze: () => client.snooze(id, until),
  };
  try {
    const item = await calls[action]();
    place(item);
    if (action === "archive") announce(`Archived: ${item.title}`);
    if (action === "snooze") announce(`Snoozed until ${formatTime(item.snoozed_until)}: ${item.title}`);
  } catch (error) {
    console.warn(`could not ${action} the item`, error);
    announce(`Could not ${action} the notification.`);
  }
}

async function openItem(li) {
  if (li.dataset.read !== "true") await act(li, "read");
  if (li.dataset.url) window.location.assign(li.dataset.url);
}

function closeMenus(except = null) {
  for (const menu of list.querySelectorAll(".snooze-menu ul")) {
    if (menu === except) continue;
    menu.hidden = true;
    menu.previousElementSibling.setAttribute("aria-expanded", "false");
  }
}

list.addEventListener("click", (event) => {
  const li = event.target.closest(".item");
  if (!li) return;
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("item-open")) {
    openItem(li);
    return;
  }
  const action = button.dataset.action;
  if (action === "snooze-menu") {
    const menu = button.nextElementSibling;
    closeMenus(menu);
    menu.hidden = !menu.hidden;
    button.setAttribute("aria-expanded", String(!menu.hidden));
    if (!menu.hidden) menu.querySelector("button").focus();
    return;
  }
  closeMenus();
  if (action) act(li, action, button.dataset.until);
});

document.addEventListener("click", (event) => {
  if (!event.target.closest(".snooze-menu")) closeMenus();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeMenus();
});

markAllButton.addEventListener("click", async () => {
  markAllButton.disabled = true;
  try {
    const result = await client.markAllRead();
    for (const li of list.querySelectorAll(".item")) if (li._item) place({ ...li._item, read: true });
    setUnread(result.unread_count ?? 0);
    announce("Everything is marked read.");
  } catch (error) {
    console.warn("could not mark everything read", error);
  } finally {
    markAllButton.disabled = false;
  }
});

for (const tab of tabs) tab.addEventListener("click", () => switchView(tab.dataset.view));
loadOlder.addEventListener("click", () => loadPage());

// Infinite scroll: the next page loads as the end of the list comes into view.
if ("IntersectionObserver" in window) {
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadPage();
  }, { rootMargin: "400px" }).observe(more);
}

// --- what the server says -------------------------------------------------------------

client.addEventListener("notification", ({ detail }) => {
  if (view === "inbox" && place(detail.item, { fresh: true })) announce(`New notification: ${detail.item.title}`);
});
client.addEventListener("unread", ({ detail }) => setUnread(detail.count));
client.addEventListener("item", ({ detail }) => {
  const shown = findItem(detail.item.id);
  if (place(detail.item, { fresh: !shown && !detail.item.read })) {
    if (!shown && view === "inbox") announce(`Back from snooze: ${detail.item.title}`);
  }
});
client.addEventListener("read_all", ({ detail }) => {
  for (const li of list.querySelectorAll(".item.unread")) {
    if (Number(li.dataset.seq) <= detail.up_to_seq && li._item && !li._item.snoozed_until) {
      place({ ...li._item, read: true, read_at: detail.read_at });
    }
  }
});
client.addEventListener("resync", () => refreshHead());
client.addEventListener("status", ({ detail }) => {
  statusEl.dataset.state = detail.state;
  statusEl.dataset.transport = detail.state === "live" ? detail.transport : "";
  const texts = {
    connecting: "Connecting…",
    live: `Live (${TRANSPORT_NAMES[detail.transport]})`,
    reconnecting: detail.retryInMs ? `Reconnecting in ${Math.ceil(detail.retryInMs / 1000)} s…` : "Reconnecting…",
    "signed-out": "Signed out: reload the page",
    stopped: "Offline",
  };
  statusEl.textContent = texts[detail.state] || detail.state;
});

// Presence: the tab is active while visible.
function reportActivity() {
  client.setActivity(document.visibilityState === "visible" ? "active" : "idle");
}
document.addEventListener("visibilitychange", reportActivity);

// The server rendered the first page; the client takes over from here.
for (const li of list.querySelectorAll(".item")) {
  const item = {
    id: Number(li.dataset.id),
    seq: Number(li.dataset.seq),
    title: li.querySelector(".item-title").textContent,
    body: li.querySelector(".item-body")?.textContent || "",
    type: li.querySelector(".item-type").textContent,
    url: li.dataset.url,
    accepted_at: li.dataset.accepted,
    read: !li.classList.contains("unread"),
    archived: false,
    snoozed_until: null,
  };
  updateItem(li, item);
}
client.activity = document.visibilityState === "visible" ? "active" : "idle";
client.start();
