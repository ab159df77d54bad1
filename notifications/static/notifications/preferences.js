// The preference center's enhancements; the form works without them (a plain POST that
// redirects back with "Saved"). With them: a channel switched for all notifications or a
// category switches the boxes below it, a category's box shows "mixed" when its types
// differ, and Save posts the form in the background (Accept: application/json) and sets
// every control to what the server stored.

const form = document.querySelector("#preferences-form");
const status = document.querySelector("#save-status");
const summary = document.querySelector("#error-summary");
const saveButton = document.querySelector("#save-preferences");

const boxes = () => [...form.querySelectorAll('input[type="checkbox"][name]:not(:disabled)')];

function below(box) {
  const { scope, channel, category } = box.dataset;
  return boxes().filter((other) => {
    if (other === box || other.dataset.channel !== channel) return false;
    if (scope === "all") return other.dataset.scope !== "all";
    if (scope === "category") return other.dataset.scope === "type" && other.dataset.category === category;
    return false;
  });
}

// A box is "mixed" when any box below it differs from it (only a hint: it still sends its
// own value).
function showMixed() {
  for (const box of boxes()) {
    if (box.dataset.scope === "type") continue;
    box.indeterminate = below(box).some((other) => other.checked !== box.checked);
  }
}

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
}

function clearErrors() {
  summary.classList.add("hidden");
  summary.replaceChildren();
  for (const invalid of form.querySelectorAll('[aria-invalid="true"]')) invalid.removeAttribute("aria-invalid");
  for (const message of form.querySelectorAll(".field-error")) message.remove();
}

function showErrors(messages) {
  clearErrors();
  const heading = document.createElement("h2");
  heading.textContent = "Nothing was saved";
  const list = document.createElement("ul");
  for (const [name, text] of Object.entries(messages)) {
    const item = document.createElement("li");
    const control = form.querySelector(`[name="${CSS.escape(name)}"]:not([type="hidden"])`);
    if (control && control.id) {
      const link = document.createElement("a");
      link.href = `#${control.id}`;
      link.textContent = text;
      item.append(link);
      control.setAttribute("aria-invalid", "true");
    } else {
      item.textContent = text;
    }
    list.append(item);
  }
  summary.append(heading, list);
  summary.classList.remove("hidden");
  summary.focus();
}

function apply(values) {
  for (const [name, value] of Object.entries(values)) {
    for (const control of form.querySelectorAll(`[name="${CSS.escape(name)}"]:not([type="hidden"])`)) {
      if (control.type === "checkbox") control.checked = value === "on";
      else control.value = value;
    }
  }
  showMixed();
}

async function save(event) {
  event.preventDefault();
  saveButton.disabled = true;
  setStatus("Saving…", "saving");
  try {
    const response = await fetch(form.action, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.saved) {
      clearErrors();
      apply(body.values);
      setStatus("Saved", "saved");
    } else if (response.status === 400 && body.messages) {
      showErrors(body.messages);
      setStatus("Not saved: see the errors above", "error");
    } else {
      setStatus(`Not saved: the server answered ${response.status}. Try again.`, "error");
    }
  } catch (error) {
    setStatus("Not saved: the server could not be reached. Try again.", "error");
  } finally {
    saveButton.disabled = false;
  }
}

if (form) {
  form.addEventListener("change", (event) => {
    const box = event.target;
    if (box.type === "checkbox") {
      for (const other of below(box)) other.checked = box.checked;
      showMixed();
    }
    if (status.dataset.state === "saved") setStatus("", "");
  });
  form.addEventListener("submit", save);
  showMixed();
}
