// The segment page's live count (notifications/admin/campaigns.py): the filters, saved or
// not, are posted as they change and the number of recipients matching now is shown, or
// what is wrong with the filters.
const shown = document.getElementById("segment-count");
const input = document.getElementById("id_filters");

function csrfToken() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

let sequence = 0;
async function count() {
  const mine = ++sequence;
  const response = await fetch(shown.dataset.url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify({ filters: input ? input.value : "{}" }),
    credentials: "same-origin",
  });
  const answer = await response.json();
  if (mine !== sequence) return;
  if (answer.errors) {
    shown.dataset.state = "invalid";
    shown.textContent = Object.entries(answer.errors).map(([where, problems]) => `${where}: ${problems.join("; ")}`).join(" · ");
  } else {
    shown.dataset.state = "ok";
    shown.textContent = `${answer.count.toLocaleString()} recipient${answer.count === 1 ? "" : "s"} match now`;
  }
}

let timer = null;
if (input) input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(count, 250); });
count();
