// The collaborative editor page (/docs/{key}/, collaboration/templates/collaboration/document.html).
//
// The document is a Yjs document synced over /ws/docs/{key} by the stock y-websocket
// provider, with an end-user token from /inbox/token/ (renewed before it runs out). A
// "rich" document is edited with Tiptap on y-prosemirror (an XmlFragment named "content"),
// a "text" one with CodeMirror 6 on y-codemirror.next (a Y.Text named "content"); viewers
// get a read-only editor. Edits made offline stay in the Yjs document and are sent when
// the socket comes back (y-websocket's sync step 1 and 2). Cursors, names and colours
// travel as awareness. Comments are anchored by Yjs relative positions, so they follow
// their text while others edit; comments, versions and members come from the REST API
// (/api/v1/documents/{key}/...), and the members' presence from the inbox socket
// (notifications/static/notifications/inbox-client.js).

import {
  Y,
  WebsocketProvider,
  Editor,
  Extension,
  StarterKit,
  Collaboration,
  CollaborationCursor,
  Plugin,
  PluginKey,
  PMDecoration,
  PMDecorationSet,
  ySyncPluginKey,
  absolutePositionToRelativePosition,
  relativePositionToAbsolutePosition,
  basicSetup,
  EditorState,
  StateEffect,
  StateField,
  EditorView,
  CMDecoration,
  cmPlaceholder,
  yCollab,
  diffWordsWithSpace,
} from "./vendor/collab.js";
import { InboxClient } from "../notifications/inbox-client.js";

const root = document.getElementById("doc");
const KEY = root.dataset.key;
const KIND = root.dataset.kind;
const CAN_WRITE = root.dataset.canWrite === "true";
const ME = { id: root.dataset.meId, name: root.dataset.meName };
const API = `${root.dataset.api}${encodeURIComponent(KEY)}/`;
const TOKEN_URL = root.dataset.tokenUrl;

const COMMENTS_REFRESH_MS = 4_000;
const VERSIONS_REFRESH_MS = 15_000;
const MEMBERS_REFRESH_MS = 60_000;
// Renew the token when this share of its lifetime has passed (never sooner than 5 s).
const TOKEN_RENEW_AT = 0.75;
// Close codes of the document socket that mean "no access": retrying will not help.
const NO_ACCESS_CODES = new Set([4403, 4404]);
const BAD_TOKEN_CODE = 4401;
const EMPTY_TEXT = CAN_WRITE ? "Start writing…" : "This document is empty.";

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "style") node.setAttribute("style", value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// --- colours: one per user, the same in every tab and for every peer -------------------

function hslToHex(h, s, l) {
  const a = s * Math.min(l, 1 - l);
  const channel = (n) => {
    const k = (n + h / 30) % 12;
    const value = l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(value * 255).toString(16).padStart(2, "0");
  };
  return `#${channel(0)}${channel(8)}${channel(4)}`;
}

function colourFor(id) {
  let hash = 2166136261;
  for (const char of String(id)) hash = Math.imul(hash ^ char.codePointAt(0), 16777619) >>> 0;
  // Dark enough for white label text on it and for text on white: yellows and greens look
  // lighter than blues at the same lightness, so they get a darker one.
  const hue = hash % 360;
  return hslToHex(hue, 0.65, hue >= 40 && hue <= 200 ? 0.32 : 0.44);
}

const MY_COLOUR = colourFor(ME.id);
const ME_AWARE = { id: ME.id, name: ME.name, color: MY_COLOUR, colorLight: `${MY_COLOUR}33` };

// --- the token, and the REST API with it -----------------------------------------------

let token = null;
let renewTimer = null;
let provider = null;

class SignedOut extends Error {}

async function fetchToken() {
  const response = await fetch(TOKEN_URL, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) throw new SignedOut("signed out");
  if (!response.ok) throw new Error(`token: ${response.status}`);
  const body = await response.json();
  token = body.token;
  const lifetime = Date.parse(body.expires_at) - Date.now();
  window.clearTimeout(renewTimer);
  if (Number.isFinite(lifetime)) {
    renewTimer = window.setTimeout(renewToken, Math.max(5_000, lifetime * TOKEN_RENEW_AT));
  }
  return token;
}

// The socket is authenticated when it opens: a fresh token in the provider's params is what
// its next reconnect uses, so a socket that drops after the old token ran out comes back.
async function renewToken() {
  try {
    await fetchToken();
    if (provider) provider.params = { ...provider.params, token };
  } catch (error) {
    if (error instanceof SignedOut) signedOut();
    else renewTimer = window.setTimeout(renewToken, 10_000);
  }
}

function errorText(data, fallback) {
  const errors = data && data.errors;
  if (!errors || typeof errors !== "object") return fallback;
  return Object.entries(errors)
    .map(([field, messages]) => `${field}: ${[].concat(messages).join(" ")}`)
    .join("; ");
}

async function api(method, path = "", body = undefined) {
  if (!token) await fetchToken();
  const send = () =>
    fetch(API + path, {
      method,
      credentials: "omit",
      headers: {
        Authorization: `Bearer ${token}`,
        Accept: "application/json",
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  let response = await send();
  if (response.status === 401) {
    await fetchToken();
    response = await send();
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(errorText(data, `${method} ${API}${path} answered ${response.status}`));
    error.status = response.status;
    throw error;
  }
  return data;
}

// --- formatting --------------------------------------------------------------------------

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const seconds = Math.round((date.getTime() - Date.now()) / 1000);
  if (Math.abs(seconds) < 45) return "just now";
  if (Math.abs(seconds) < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (Math.abs(seconds) < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return date.toLocaleString();
}

function timeEl(iso) {
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString() }, when(iso));
}

function avatar(id, name) {
  const initial = (name || id || "?").trim().charAt(0).toUpperCase() || "?";
  return el("span", { className: "avatar", style: `background:${colourFor(id)}`, "aria-hidden": "true" }, initial);
}

// --- connection status -------------------------------------------------------------------

const statusEl = $("doc-status");
const offlineBanner = $("doc-offline");
let everSynced = false;
let everClosed = false;
let editsWhileOffline = false;
let fatal = null;

function showStatus() {
  let state = "connecting";
  let text = "Connecting…";
  if (fatal) {
    state = "offline";
    text = fatal;
  } else if (provider && provider.wsconnected && provider.synced) {
    state = "synced";
    text = "Synced";
  } else if (provider && provider.wsconnected) {
    text = "Syncing…";
  } else if (everClosed || !navigator.onLine) {
    state = "offline";
    text = "Offline";
  }
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  offlineBanner.classList.toggle("hidden", state !== "offline" || Boolean(fatal) || !CAN_WRITE);
}

function signedOut() {
  fatal = "Signed out";
  if (provider) provider.disconnect();
  showBanner("Your session has ended: log in again to keep editing.", "error");
  showStatus();
}

function showBanner(text, kind = "info") {
  const banner = el("p", { className: `banner ${kind}`, role: "alert" }, text);
  root.querySelector(".doc-head").after(banner);
}

// --- the Yjs document and its socket -----------------------------------------------------

const ydoc = new Y.Doc();
const editorEl = $("editor");
let adapter = null; // the editor's side of comments: selection, positions, highlights

async function connect() {
  try {
    await fetchToken();
  } catch (error) {
    if (error instanceof SignedOut) signedOut();
    else window.setTimeout(connect, 3_000);
    return;
  }
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  provider = new WebsocketProvider(`${scheme}://${window.location.host}/ws/docs`, KEY, ydoc, {
    params: { token },
    maxBackoffTime: 5_000,
  });
  provider.on("status", () => showStatus());
  provider.on("sync", (synced) => {
    if (synced) {
      everSynced = true;
      editsWhileOffline = false;
      editorEl.dataset.state = "synced";
    }
    showStatus();
  });
  provider.on("connection-close", (event) => {
    everClosed = true;
    const code = event ? event.code : 0;
    if (code === BAD_TOKEN_CODE) renewToken();
    if (NO_ACCESS_CODES.has(code)) {
      fatal = "No access";
      provider.disconnect();
      showBanner("You are no longer a member of this document.", "error");
    }
    showStatus();
  });
  window.addEventListener("online", showStatus);
  window.addEventListener("offline", showStatus);
  provider.awareness.on("change", renderHere);
  ydoc.on("update", (_update, origin) => {
    if (origin !== provider && !provider.wsconnected) editsWhileOffline = true;
    scheduleHighlights();
  });
  window.addEventListener("beforeunload", (event) => {
    if (editsWhileOffline) event.preventDefault();
  });
  editorEl.replaceChildren();
  adapter = KIND === "rich" ? richEditor() : textEditor();
  // For tests and the console: the document, its socket and its text as the editor shows it.
  window.documentPage = { ydoc, provider, text: () => adapter.text() };
  showStatus();
  loadComments();
}

// --- rich text: Tiptap on y-prosemirror --------------------------------------------------

const highlightKey = new PluginKey("commentHighlights");

const CommentHighlights = Extension.create({
  name: "commentHighlights",
  addProseMirrorPlugins() {
    return [
      new Plugin({
        key: highlightKey,
        state: {
          init: () => PMDecorationSet.empty,
          apply(tr, set) {
            const ranges = tr.getMeta(highlightKey);
            if (!ranges) return set.map(tr.mapping, tr.doc);
            const size = tr.doc.content.size;
            return PMDecorationSet.create(
              tr.doc,
              ranges
                .filter((range) => range.from < range.to && range.to <= size)
                .map((range) =>
                  PMDecoration.inline(range.from, range.to, {
                    class: range.active ? "comment-span active" : "comment-span",
                    "data-comment": String(range.id),
                  }),
                ),
            );
          },
        },
        props: {
          decorations(state) {
            return highlightKey.getState(state);
          },
        },
      }),
    ];
  },
});

const FORMAT_COMMANDS = {
  bold: (chain) => chain.toggleBold(),
  italic: (chain) => chain.toggleItalic(),
  strike: (chain) => chain.toggleStrike(),
  heading1: (chain) => chain.toggleHeading({ level: 1 }),
  heading2: (chain) => chain.toggleHeading({ level: 2 }),
  bulletList: (chain) => chain.toggleBulletList(),
  orderedList: (chain) => chain.toggleOrderedList(),
  blockquote: (chain) => chain.toggleBlockquote(),
  codeBlock: (chain) => chain.toggleCodeBlock(),
};
const FORMAT_ACTIVE = {
  bold: ["bold"],
  italic: ["italic"],
  strike: ["strike"],
  heading1: ["heading", { level: 1 }],
  heading2: ["heading", { level: 2 }],
  bulletList: ["bulletList"],
  orderedList: ["orderedList"],
  blockquote: ["blockquote"],
  codeBlock: ["codeBlock"],
};

// A remote user's caret and name. The word joiners on both sides (as y-prosemirror's own
// caret has) give Chromium a text position next to the widget: without them, keyboard
// navigation such as Ctrl+Home stops dead at a remote caret.
function remoteCaret(user) {
  const caret = el("span", { className: "collaboration-cursor__caret", style: `border-color:${user.color}` });
  const label = el("span", { className: "collaboration-cursor__label", style: `background-color:${user.color}` }, user.name);
  caret.append(document.createTextNode("\u2060"), label, document.createTextNode("\u2060"));
  return caret;
}

function richEditor() {
  const fragment = ydoc.getXmlFragment("content");
  const editor = new Editor({
    element: editorEl,
    editable: CAN_WRITE,
    extensions: [
      // Undo and redo come from Yjs (the Collaboration extension): a local history would
      // undo other people's edits too.
      StarterKit.configure({ history: false }),
      Collaboration.configure({ document: ydoc, field: "content" }),
      CollaborationCursor.configure({ provider, user: ME_AWARE, render: remoteCaret }),
      CommentHighlights,
    ],
    editorProps: {
      attributes: {
        class: "prose",
        role: "textbox",
        "aria-multiline": "true",
        "aria-label": "Document content",
        "aria-readonly": String(!CAN_WRITE),
      },
    },
    onSelectionUpdate: selectionChanged,
    onTransaction: () => {
      for (const button of document.querySelectorAll("#format-tools [data-command]")) {
        const [name, attributes] = FORMAT_ACTIVE[button.dataset.command];
        button.setAttribute("aria-pressed", String(editor.isActive(name, attributes)));
      }
    },
  });
  for (const button of document.querySelectorAll("#format-tools [data-command]")) {
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => FORMAT_COMMANDS[button.dataset.command](editor.chain().focus()).run());
  }
  const mapping = () => ySyncPluginKey.getState(editor.state)?.binding?.mapping;
  return {
    kind: "rich",
    editor,
    text: () => editor.state.doc.textBetween(0, editor.state.doc.content.size, "\n", " "),
    selection() {
      const { from, to, empty } = editor.state.selection;
      if (empty) return null;
      return { from, to, quote: editor.state.doc.textBetween(from, to, "\n", " ") };
    },
    relative(position) {
      const map = mapping();
      if (!map) return null;
      return Y.relativePositionToJSON(absolutePositionToRelativePosition(position, fragment, map));
    },
    absolute(json) {
      const map = mapping();
      if (!map || !json) return null;
      try {
        return relativePositionToAbsolutePosition(ydoc, fragment, Y.createRelativePositionFromJSON(json), map);
      } catch {
        return null;
      }
    },
    setHighlights(ranges) {
      if (editor.isDestroyed) return;
      editor.view.dispatch(editor.state.tr.setMeta(highlightKey, ranges).setMeta("addToHistory", false));
    },
    reveal(from) {
      const { node } = editor.view.domAtPos(from);
      const element = node.nodeType === Node.TEXT_NODE ? node.parentElement : node;
      element?.scrollIntoView({ block: "center", behavior: "smooth" });
    },
  };
}

// --- plain text: CodeMirror 6 on y-codemirror.next --------------------------------------

const setHighlights = StateEffect.define();
const highlightField = StateField.define({
  create: () => CMDecoration.none,
  update(decorations, tr) {
    let next = decorations.map(tr.changes);
    for (const effect of tr.effects) if (effect.is(setHighlights)) next = effect.value;
    return next;
  },
  provide: (field) => EditorView.decorations.from(field),
});

function textEditor() {
  const ytext = ydoc.getText("content");
  provider.awareness.setLocalStateField("user", ME_AWARE);
  const view = new EditorView({
    parent: editorEl,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        basicSetup,
        EditorView.lineWrapping,
        cmPlaceholder(EMPTY_TEXT),
        yCollab(ytext, provider.awareness, { undoManager: new Y.UndoManager(ytext) }),
        highlightField,
        EditorState.readOnly.of(!CAN_WRITE),
        EditorView.editable.of(CAN_WRITE),
        EditorView.contentAttributes.of({ "aria-label": "Document content", "aria-readonly": String(!CAN_WRITE) }),
        EditorView.updateListener.of((update) => {
          if (update.selectionSet || update.focusChanged) selectionChanged();
        }),
      ],
    }),
  });
  return {
    kind: "text",
    view,
    text: () => ytext.toString(),
    selection() {
      const { from, to, empty } = view.state.selection.main;
      if (empty) return null;
      return { from, to, quote: view.state.sliceDoc(from, to) };
    },
    relative(index, assoc = 0) {
      return Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, index, assoc));
    },
    absolute(json) {
      if (!json) return null;
      try {
        const position = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(json), ydoc);
        return position && position.type === ytext ? position.index : null;
      } catch {
        return null;
      }
    },
    setHighlights(ranges) {
      const length = view.state.doc.length;
      const marks = ranges
        .filter((range) => range.from < range.to && range.to <= length)
        .map((range) =>
          CMDecoration.mark({
            class: range.active ? "comment-span active" : "comment-span",
            attributes: { "data-comment": String(range.id) },
          }).range(range.from, range.to),
        );
      view.dispatch({ effects: setHighlights.of(CMDecoration.set(marks, true)) });
    },
    reveal(from) {
      view.dispatch({ effects: EditorView.scrollIntoView(from, { y: "center" }) });
    },
  };
}

// --- who is here (awareness) and the members' presence -----------------------------------

const hereEl = $("doc-here");
const presence = new Map(); // external_id -> online | idle | offline
let members = []; // [{recipient, name, role}]

function awarenessUsers() {
  const users = new Map();
  if (!provider) return users;
  for (const [clientId, state] of provider.awareness.getStates()) {
    const user = state && state.user;
    if (!user || !user.id) continue;
    const entry = users.get(user.id) || { ...user, clients: 0, self: false };
    entry.clients += 1;
    if (clientId === ydoc.clientID) entry.self = true;
    users.set(user.id, entry);
  }
  return users;
}

function renderHere() {
  const users = [...awarenessUsers().values()].sort((a, b) => Number(b.self) - Number(a.self) || a.name.localeCompare(b.name));
  hereEl.replaceChildren(
    ...users.map((user) =>
      el(
        "li",
        { className: "here-user", "data-user": user.id, title: `${user.name}${user.self ? " (you)" : ""} is here` },
        el("span", { className: "dot", style: `background:${user.color || colourFor(user.id)}`, "aria-hidden": "true" }),
        el("span", { className: "here-name", style: `color:${user.color || colourFor(user.id)}` }, user.name),
        user.self ? el("span", { className: "muted" }, " (you)") : null,
      ),
    ),
  );
  renderPeople();
}

function renderPeople() {
  const list = $("people-list");
  if (!members.length) {
    list.replaceChildren(el("li", { className: "muted" }, "Members are listed once the document has loaded."));
    return;
  }
  const here = awarenessUsers();
  const order = { owner: 0, editor: 1, viewer: 2 };
  const sorted = [...members].sort((a, b) => order[a.role] - order[b.role] || (a.name || a.recipient).localeCompare(b.name || b.recipient));
  list.replaceChildren(
    ...sorted.map((member) => {
      const status = here.has(member.recipient) ? "online" : presence.get(member.recipient) || "offline";
      const label = here.has(member.recipient) ? "here now" : status;
      return el(
        "li",
        { className: "person", "data-member": member.recipient, "data-presence": status },
        avatar(member.recipient, member.name),
        el(
          "span",
          { className: "person-text" },
          el("strong", {}, member.name || member.recipient, member.recipient === ME.id ? " (you)" : ""),
          el("span", { className: "muted" }, `@${member.recipient} · ${member.role}`),
        ),
        el("span", { className: `presence presence-${status}`, title: `Presence: ${status}` }, label),
      );
    }),
  );
}

async function loadMembers() {
  try {
    const document_ = await api("GET");
    members = Array.isArray(document_.members) ? document_.members : [];
    for (const member of members) if (member.presence) presence.set(member.recipient, member.presence);
    renderPeople();
    watchPresence();
  } catch (error) {
    $("people-list").replaceChildren(el("li", { className: "error" }, `Members could not be loaded (${error.message}).`));
  }
}

let inbox = null;

async function watchPresence() {
  const ids = members.map((member) => member.recipient).filter((id) => id !== ME.id);
  if (!inbox) {
    // The inbox socket says who of the members is online (and makes this user online).
    // It starts after the newest inbox item: this page does not replay the inbox.
    inbox = new InboxClient({ getToken: fetchToken, transports: ["websocket"] });
    try {
      inbox.lastSeq = Number((await inbox.list({ limit: 1 })).last_seq) || 0;
    } catch {
      // no inbox listing: the socket resumes from the start, which is only slower
    }
    inbox.addEventListener("presence", (event) => {
      for (const [id, state] of Object.entries(event.detail.changes || {})) presence.set(id, state.status);
      renderPeople();
    });
    inbox.start();
  }
  if (ids.length) inbox.watchPresence(ids);
}

// --- comments ------------------------------------------------------------------------------

const threadsEl = $("comment-threads");
const commentButton = $("comment-selection");
const form = $("comment-form");
const bodyInput = $("comment-body");
const commentError = $("comment-error");
let threads = [];
let threadsSignature = "";
let activeThread = null;
let pendingAnchor = null; // {anchor, quote} of the comment being written
const drafts = new Map(); // thread id -> reply text being written

function selectionChanged() {
  const selection = adapter && adapter.selection();
  commentButton.disabled = !selection;
  commentButton.title = selection ? "Comment on the selected text" : "Select some text first";
}

commentButton.addEventListener("click", () => {
  const selection = adapter && adapter.selection();
  if (!selection) return;
  const start = adapter.kind === "text" ? adapter.relative(selection.from, 0) : adapter.relative(selection.from);
  const end = adapter.kind === "text" ? adapter.relative(selection.to, -1) : adapter.relative(selection.to);
  pendingAnchor = { anchor: start && end ? { start, end } : null, quote: selection.quote.slice(0, 500) };
  $("comment-quote").textContent = pendingAnchor.quote;
  commentError.classList.add("hidden");
  form.classList.remove("hidden");
  showPanel("comments");
  bodyInput.focus();
});

$("comment-cancel").addEventListener("click", () => {
  form.classList.add("hidden");
  form.reset();
  pendingAnchor = null;
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = bodyInput.value.trim();
  if (!body) return;
  const submit = $("comment-submit");
  submit.disabled = true;
  try {
    const created = await api("POST", "comments/", {
      body,
      ...(pendingAnchor && pendingAnchor.anchor ? { anchor: pendingAnchor.anchor } : {}),
      quote: pendingAnchor ? pendingAnchor.quote : "",
    });
    form.reset();
    form.classList.add("hidden");
    pendingAnchor = null;
    activeThread = created && created.id;
    await loadComments();
  } catch (error) {
    commentError.textContent = error.message;
    commentError.classList.remove("hidden");
  } finally {
    submit.disabled = false;
  }
});

$("show-resolved").addEventListener("change", () => renderThreads());

async function loadComments() {
  try {
    const data = await api("GET", "comments/");
    const results = Array.isArray(data.results) ? data.results : [];
    const signature = JSON.stringify(results);
    if (signature !== threadsSignature) {
      threads = results;
      threadsSignature = signature;
      renderThreads();
    }
  } catch (error) {
    $("comments-empty").textContent = `Comments could not be loaded (${error.message}).`;
  }
  scheduleHighlights();
}

function bodyWithMentions(text) {
  const known = new Map(members.map((member) => [member.recipient, member.name || member.recipient]));
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/@([A-Za-z0-9][A-Za-z0-9._:-]*)/g)) {
    let id = match[1];
    while (id && !known.has(id) && /[.:_-]$/.test(id)) id = id.slice(0, -1); // "@ana." ends a sentence
    if (!known.has(id)) continue;
    parts.push(text.slice(last, match.index));
    parts.push(el("span", { className: "mention", title: known.get(id) }, `@${id}`));
    last = match.index + 1 + id.length;
  }
  parts.push(text.slice(last));
  return parts;
}

function commentEl(comment, isReply) {
  const author = comment.author || {};
  const authorId = author.recipient || "";
  const mine = authorId === ME.id;
  const remove = mine
    ? el("button", { type: "button", className: "link small", "data-action": "delete", "data-id": comment.id }, "Delete")
    : null;
  return el(
    "article",
    { className: isReply ? "comment reply" : "comment", "data-id": comment.id },
    el(
      "header",
      {},
      avatar(authorId, author.name),
      el("strong", {}, author.name || authorId || "Someone"),
      timeEl(comment.created_at),
      remove,
    ),
    el("p", { className: "comment-body" }, bodyWithMentions(comment.body || "")),
  );
}

function spanOf(thread) {
  if (!adapter || !thread.anchor) return null;
  const from = adapter.absolute(thread.anchor.start);
  const to = adapter.absolute(thread.anchor.end);
  if (from === null || to === null || from === undefined || to === undefined || to <= from) return null;
  return { from, to };
}

// The commented text can go (deleted, or replaced by a restore) and come back (undo).
function markDetached(thread, detached) {
  const item = threadsEl.querySelector(`.thread[data-id="${thread.id}"]`);
  if (!item || !thread.quote) return;
  const quote = item.querySelector(".quote");
  quote.classList.toggle("detached", detached);
  quote.title = detached ? "This text has been deleted" : "Show in the document";
  item.querySelector(".detached-note").hidden = !detached;
}

function renderThreads() {
  const showResolved = $("show-resolved").checked;
  const visible = threads.filter((thread) => showResolved || !thread.resolved);
  const open = threads.filter((thread) => !thread.resolved).length;
  $("comments-count").textContent = open ? String(open) : "";
  $("comments-empty").classList.toggle("hidden", visible.length > 0);
  if (threads.length && !visible.length) $("comments-empty").textContent = "No open comments.";
  // Keep what is being typed in a reply across the refresh.
  const focused = document.activeElement && document.activeElement.closest?.(".reply-form");
  const focusedThread = focused ? focused.dataset.thread : null;
  for (const textarea of threadsEl.querySelectorAll(".reply-form textarea")) {
    drafts.set(textarea.closest(".reply-form").dataset.thread, textarea.value);
  }
  threadsEl.replaceChildren(
    ...visible.map((thread) => {
      const span = spanOf(thread);
      const detached = everSynced && !span; // before the first sync nothing resolves yet
      const draft = drafts.get(String(thread.id)) || "";
      const replyInput = el("textarea", { rows: 2, placeholder: "Reply… type @ to mention", "aria-label": "Reply" });
      replyInput.value = draft;
      const replyField = mentionField(replyInput); // (a detached textarea is simply wrapped)
      return el(
        "li",
        {
          className: `thread${thread.resolved ? " resolved" : ""}${activeThread === thread.id ? " active" : ""}`,
          "data-id": thread.id,
        },
        thread.quote
          ? el(
              "button",
              {
                type: "button",
                className: `quote${detached ? " detached" : ""}`,
                "data-action": "reveal",
                title: detached ? "This text has been deleted" : "Show in the document",
              },
              thread.quote,
            )
          : null,
        thread.quote ? el("p", { className: "muted small detached-note", hidden: !detached }, "The commented text was deleted.") : null,
        commentEl(thread, false),
        (thread.replies || []).map((reply) => commentEl(reply, true)),
        el(
          "form",
          { className: "reply-form", "data-thread": thread.id },
          replyField,
          el(
            "div",
            { className: "form-actions" },
            CAN_WRITE
              ? el(
                  "button",
                  { type: "button", className: "button small", "data-action": thread.resolved ? "reopen" : "resolve" },
                  thread.resolved ? "Reopen" : "Resolve",
                )
              : null,
            el("button", { type: "submit", className: "button small primary" }, "Reply"),
          ),
        ),
        thread.resolved ? el("p", { className: "muted small resolved-note" }, `Resolved ${when(thread.resolved_at)}`) : null,
      );
    }),
  );
  if (focusedThread) {
    const textarea = threadsEl.querySelector(`.reply-form[data-thread="${focusedThread}"] textarea`);
    if (textarea) {
      textarea.focus();
      textarea.setSelectionRange(textarea.value.length, textarea.value.length);
    }
  }
  scheduleHighlights();
}

threadsEl.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  const thread = event.target.closest(".thread");
  if (!thread) return;
  const id = Number(thread.dataset.id);
  if (!button || button.dataset.action === "reveal") {
    if (event.target.closest("textarea, form")) return;
    activate(id, true);
    return;
  }
  const action = button.dataset.action;
  button.disabled = true;
  try {
    if (action === "resolve" || action === "reopen") {
      await api("PATCH", `comments/${id}/`, { resolved: action === "resolve" });
    } else if (action === "delete") {
      if (button.dataset.armed !== "true") {
        button.dataset.armed = "true";
        button.textContent = "Delete?";
        button.disabled = false;
        window.setTimeout(() => {
          button.dataset.armed = "false";
          button.textContent = "Delete";
        }, 4_000);
        return;
      }
      await api("DELETE", `comments/${button.dataset.id}/`);
    }
    await loadComments();
  } catch (error) {
    thread.append(el("p", { className: "error small", role: "alert" }, error.message));
  } finally {
    button.disabled = false;
  }
});

threadsEl.addEventListener("submit", async (event) => {
  event.preventDefault();
  const replyForm = event.target.closest(".reply-form");
  const textarea = replyForm.querySelector("textarea");
  const body = textarea.value.trim();
  if (!body) return;
  try {
    await api("POST", "comments/", { body, parent: Number(replyForm.dataset.thread) });
    drafts.delete(replyForm.dataset.thread);
    textarea.value = "";
    await loadComments();
  } catch (error) {
    replyForm.append(el("p", { className: "error small", role: "alert" }, error.message));
  }
});

editorEl.addEventListener("click", (event) => {
  const span = event.target.closest("[data-comment]");
  if (span) activate(Number(span.dataset.comment), false);
});

function activate(id, reveal) {
  activeThread = id;
  for (const item of threadsEl.querySelectorAll(".thread")) {
    item.classList.toggle("active", Number(item.dataset.id) === id);
  }
  const thread = threads.find((candidate) => candidate.id === id);
  const span = thread && spanOf(thread);
  if (reveal && span) adapter.reveal(span.from);
  if (!reveal) {
    showPanel("comments");
    threadsEl.querySelector(`.thread[data-id="${id}"]`)?.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
  scheduleHighlights();
}

// Highlights are worked out from the relative positions after the editor has taken in
// the latest change (never inside its update), at most once per frame, and given to the
// editor only when they moved: an editor update redraws the selection from the editor's
// state, which would undo a caret move the browser has made and not yet reported.
let highlightFrame = null;
let highlighted = "[]";
function scheduleHighlights() {
  if (highlightFrame !== null || !adapter) return;
  highlightFrame = window.setTimeout(() => {
    highlightFrame = null;
    const ranges = [];
    for (const thread of threads) {
      const span = spanOf(thread);
      if (span && !thread.resolved) ranges.push({ ...span, id: thread.id, active: thread.id === activeThread });
      if (everSynced) markDetached(thread, !span);
    }
    const signature = JSON.stringify(ranges);
    if (signature === highlighted) return;
    highlighted = signature;
    adapter.setHighlights(ranges);
  }, 30);
}

// --- @mentions -------------------------------------------------------------------------------

// A list of members under the textarea while an "@name" is being typed; returns the
// wrapper that holds both.
function mentionField(textarea) {
  const menu = el("ul", { className: "mention-menu hidden", role: "listbox", "aria-label": "Mention a member" });
  let choices = [];
  let index = 0;
  const wrap = el("div", { className: "mention-wrap" });
  textarea.replaceWith(wrap);
  wrap.append(textarea, menu);

  const query = () => {
    const before = textarea.value.slice(0, textarea.selectionStart);
    const match = before.match(/(^|\s)@([^\s@]*)$/);
    return match ? match[2].toLowerCase() : null;
  };
  const close = () => {
    menu.classList.add("hidden");
    choices = [];
  };
  const choose = (member) => {
    const caret = textarea.selectionStart;
    const before = textarea.value.slice(0, caret).replace(/@([^\s@]*)$/, `@${member.recipient} `);
    textarea.value = before + textarea.value.slice(caret);
    textarea.setSelectionRange(before.length, before.length);
    textarea.focus();
    close();
  };
  const render = () => {
    menu.replaceChildren(
      ...choices.map((member, n) =>
        el(
          "li",
          {
            role: "option",
            className: n === index ? "selected" : "",
            "aria-selected": String(n === index),
            "data-member": member.recipient,
            onmousedown: (event) => {
              event.preventDefault();
              choose(member);
            },
          },
          avatar(member.recipient, member.name),
          el("span", {}, member.name || member.recipient),
          el("span", { className: "muted" }, `@${member.recipient}`),
        ),
      ),
    );
    menu.classList.toggle("hidden", choices.length === 0);
  };
  textarea.addEventListener("input", () => {
    const typed = query();
    if (typed === null) return close();
    choices = members
      .filter((member) => member.recipient !== ME.id)
      .filter((member) => member.recipient.toLowerCase().startsWith(typed) || (member.name || "").toLowerCase().includes(typed))
      .slice(0, 8);
    index = 0;
    render();
  });
  textarea.addEventListener("keydown", (event) => {
    if (!choices.length) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      index = (index + (event.key === "ArrowDown" ? 1 : choices.length - 1)) % choices.length;
      render();
    } else if (event.key === "Enter" || event.key === "Tab") {
      event.preventDefault();
      choose(choices[index]);
    } else if (event.key === "Escape") {
      close();
    }
  });
  textarea.addEventListener("blur", () => window.setTimeout(close, 150));
  return wrap;
}

mentionField(bodyInput);

// --- versions --------------------------------------------------------------------------------

const versionList = $("version-list");
const diffFrom = $("diff-from");
const diffTo = $("diff-to");
let versions = [];
let comparing = false; // the reader picked what to compare: keep it across refreshes
diffFrom.addEventListener("change", () => (comparing = true));
diffTo.addEventListener("change", () => (comparing = true));

function versionLabel(version) {
  return `v${version.number} · ${version.name || (version.kind === "auto" ? "Automatic" : "Unnamed")}`;
}

function creatorName(createdBy) {
  if (!createdBy) return "";
  if (typeof createdBy === "object") return createdBy.name || createdBy.recipient || "";
  const member = members.find((candidate) => candidate.recipient === createdBy);
  return member ? member.name || createdBy : String(createdBy);
}

async function loadVersions() {
  try {
    const data = await api("GET", "versions/");
    versions = Array.isArray(data.results) ? data.results : [];
  } catch (error) {
    $("versions-empty").textContent = `Versions could not be loaded (${error.message}).`;
    return;
  }
  $("versions-empty").classList.toggle("hidden", versions.length > 0);
  $("version-compare").classList.toggle("hidden", versions.length === 0);
  versionList.replaceChildren(
    ...versions.map((version) => {
      const by = creatorName(version.created_by);
      return el(
        "li",
        { className: `version version-${version.kind}`, "data-number": version.number },
        el(
          "div",
          { className: "version-text-col" },
          el(
            "span",
            { className: "version-title" },
            el("span", { className: "version-number" }, `v${version.number}`),
            " ",
            el("strong", {}, version.name || (version.kind === "auto" ? "Automatic snapshot" : "Unnamed")),
          ),
          el("span", { className: "muted small" }, timeEl(version.created_at), by ? ` · ${by}` : ""),
        ),
        el(
          "div",
          { className: "version-actions" },
          el("button", { type: "button", className: "button small", "data-action": "view" }, "View"),
          CAN_WRITE ? el("button", { type: "button", className: "button small", "data-action": "restore" }, "Restore") : null,
        ),
      );
    }),
  );
  const newest = versions.length ? String(versions[0].number) : "current";
  const keep = comparing ? [diffFrom.value, diffTo.value] : [newest, "current"];
  const options = (selected) => [
    el("option", { value: "current", selected: selected === "current" }, "Current document"),
    ...versions.map((version) =>
      el("option", { value: String(version.number), selected: selected === String(version.number) }, versionLabel(version)),
    ),
  ];
  diffFrom.replaceChildren(...options(keep[0]));
  diffTo.replaceChildren(...options(keep[1]));
}

async function versionText(which) {
  if (which === "current") return (await api("GET", "content/")).text || "";
  return (await api("GET", `versions/${which}/`)).text || "";
}

function showVersionView(title, nodes, isDiff) {
  $("version-view-title").textContent = title;
  $("version-text").replaceChildren(...nodes);
  $("diff-legend").classList.toggle("hidden", !isDiff);
  $("version-view").classList.remove("hidden");
  $("version-view").scrollIntoView({ block: "nearest", behavior: "smooth" });
}

$("version-view-close").addEventListener("click", () => $("version-view").classList.add("hidden"));

$("diff-show").addEventListener("click", async () => {
  const [from, to] = [diffFrom.value, diffTo.value];
  const name = (value) => (value === "current" ? "the current document" : `v${value}`);
  try {
    const [before, after] = await Promise.all([versionText(from), versionText(to)]);
    const parts = diffWordsWithSpace(before, after);
    const nodes = parts.map((part) =>
      part.added ? el("ins", {}, part.value) : part.removed ? el("del", {}, part.value) : document.createTextNode(part.value),
    );
    const changed = parts.some((part) => part.added || part.removed);
    showVersionView(`Changes from ${name(from)} to ${name(to)}`, changed ? nodes : [el("span", { className: "muted" }, "No differences.")], true);
  } catch (error) {
    showVersionView("Comparison failed", [el("span", { className: "error" }, error.message)], false);
  }
});

versionList.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const number = Number(button.closest(".version").dataset.number);
  const version = versions.find((candidate) => candidate.number === number);
  if (button.dataset.action === "view") {
    try {
      const text = await versionText(number);
      showVersionView(versionLabel(version), [text ? document.createTextNode(text) : el("span", { className: "muted" }, "(empty)")], false);
    } catch (error) {
      showVersionView(versionLabel(version), [el("span", { className: "error" }, error.message)], false);
    }
  } else if (button.dataset.action === "restore") {
    confirmRestore(version);
  }
});

function confirmRestore(version) {
  const dialog = $("restore-dialog");
  $("restore-title").textContent = `Restore ${versionLabel(version)}?`;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "restore") return;
      try {
        const result = await api("POST", `versions/${version.number}/restore/`);
        const saved = result && result.version ? ` The text before it is saved as v${result.version.number}.` : "";
        $("version-view").classList.add("hidden"); // what it showed is out of date now
        flashVersions(`Restored v${version.number}.${saved}`);
        await loadVersions();
      } catch (error) {
        flashVersions(`Restore failed: ${error.message}`, true);
      }
    },
    { once: true },
  );
  dialog.showModal();
}

function flashVersions(text, isError = false) {
  for (const old of $("panel-versions").querySelectorAll(".flash")) old.remove();
  const note = el("p", { className: isError ? "error flash" : "flash", role: "status" }, text);
  $("panel-versions").prepend(note);
  window.setTimeout(() => note.remove(), 6_000);
}

$("version-form")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("version-name");
  const error = $("version-error");
  error.classList.add("hidden");
  try {
    const version = await api("POST", "versions/", { name: input.value.trim() });
    input.value = "";
    flashVersions(`Saved v${version.number}${version.name ? ` “${version.name}”` : ""}.`);
    await loadVersions();
  } catch (failure) {
    error.textContent = failure.message;
    error.classList.remove("hidden");
  }
});

// --- the side panel ----------------------------------------------------------------------------

function showPanel(name) {
  for (const tab of document.querySelectorAll(".doc-side .tab")) {
    const selected = tab.dataset.panel === name;
    tab.setAttribute("aria-pressed", String(selected));
    $(`panel-${tab.dataset.panel}`).classList.toggle("hidden", !selected);
  }
  if (name === "versions") loadVersions();
  if (name === "people") renderPeople();
}

for (const tab of document.querySelectorAll(".doc-side .tab")) {
  tab.addEventListener("click", () => showPanel(tab.dataset.panel));
}

// --- start ---------------------------------------------------------------------------------------

renderPeople();
connect().then(() => {
  loadMembers().then(() => renderThreads());
  window.setInterval(() => document.hidden || loadComments(), COMMENTS_REFRESH_MS);
  window.setInterval(() => {
    if (!document.hidden && !$("panel-versions").classList.contains("hidden")) loadVersions();
  }, VERSIONS_REFRESH_MS);
  window.setInterval(() => document.hidden || loadMembers(), MEMBERS_REFRESH_MS);
});
