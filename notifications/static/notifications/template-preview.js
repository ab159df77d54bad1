// The template version page's live preview (notifications/admin/template_versions.py):
// what the page holds, saved or not, is posted to the preview endpoint as it changes, and
// each channel is shown rendered with the variables' examples in the chosen locale and
// timezone, with the checks a send makes (SMS segments, push size, email text part) and
// everything that keeps the version from being published.

const panel = document.getElementById("tv-preview");
const cards = document.getElementById("tv-cards");
const status = document.getElementById("tv-status");
const liveErrors = document.getElementById("tv-live-errors");
const locale = document.getElementById("tv-locale");
const timezone = document.getElementById("tv-timezone");
const templatesInput = document.getElementById("id_templates");
const variablesInput = document.getElementById("id_variables");

function stored(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : {};
}

function csrfToken() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const LABELS = { inapp: "In-app", email: "Email", sms: "SMS", push: "Push", webhook: "Webhook" };

function card(preview) {
  const head = element("header", {}, element("strong", {}, LABELS[preview.channel] || preview.channel),
    element("span", { class: "tv-quiet" }, ` · ${preview.locale}`));
  const node = element("article", { class: "tv-card", "data-channel": preview.channel }, head);
  if (preview.error) {
    node.classList.add("tv-card-error");
    node.append(element("p", { class: "tv-problem" }, preview.error));
    return node;
  }
  for (const fact of preview.facts) node.append(element("p", { class: "tv-fact" }, fact));
  for (const problem of preview.problems) node.append(element("p", { class: "tv-problem" }, problem));
  if (preview.problems.length) node.classList.add("tv-card-error");
  for (const [name, value] of Object.entries(preview.fields)) {
    if (value === "") continue;
    if (preview.channel === "email" && name === "html") {
      // The rendered email in a sandbox: no script runs, no form posts, no navigation.
      const frame = element("iframe", { sandbox: "allow-same-origin", title: "Email HTML", class: "tv-html" });
      frame.srcdoc = value;
      node.append(element("div", { class: "tv-field" }, element("span", { class: "tv-name" }, name), frame));
    } else {
      node.append(element("div", { class: "tv-field" }, element("span", { class: "tv-name" }, name),
        element("div", { class: `tv-value tv-${name}` }, value)));
    }
  }
  return node;
}

let sequence = 0;

async function render() {
  const mine = ++sequence;
  status.textContent = "Rendering…";
  const body = {
    templates: templatesInput ? templatesInput.value : stored("tv-stored-templates"),
    variables: variablesInput ? variablesInput.value : stored("tv-stored-variables"),
    locale: locale.value.trim(),
    timezone: timezone.value.trim(),
  };
  let answer;
  try {
    const response = await fetch(panel.dataset.url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    answer = await response.json();
  } catch (error) {
    if (mine === sequence) status.textContent = `Preview failed: ${error}`;
    return;
  }
  if (mine !== sequence) return; // a newer edit is on its way
  liveErrors.replaceChildren(...Object.entries(answer.errors || {}).flatMap(([where, problems]) =>
    problems.map((problem) => element("li", {}, element("code", {}, where || "version"), `: ${problem}`))));
  cards.replaceChildren(...(answer.previews || []).map(card));
  const count = Object.keys(answer.errors || {}).length;
  if (!templatesInput) {
    status.textContent = "Rendered with the variables' examples";
    return;
  }
  status.textContent = count ? `${count} problem${count > 1 ? "s" : ""} to fix before publishing` : "Ready to publish";
  status.dataset.state = count ? "problems" : "ready";
}

let timer = null;
function soon() {
  clearTimeout(timer);
  timer = setTimeout(render, 250);
}

for (const input of [templatesInput, variablesInput, locale, timezone]) {
  if (input) input.addEventListener("input", soon);
}
render();
