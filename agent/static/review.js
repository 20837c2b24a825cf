// factory-agent review page: small enhancements; every page works without this script.
"use strict";

// Times are rendered in UTC by the server; show them in the tablet's local time.
for (const t of document.querySelectorAll("time[datetime]")) {
  const d = new Date(t.getAttribute("datetime"));
  if (!Number.isNaN(d.getTime())) {
    t.title = t.textContent;
    t.textContent = d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }
}

// The inbox: a changed filter applies at once; the list refreshes while nobody touches it.
const filters = document.querySelector("form.filters");
if (filters) {
  for (const select of filters.querySelectorAll("select")) {
    select.addEventListener("change", () => filters.submit());
  }
}
const refresh = Number(document.body.dataset.refresh || 0);
if (refresh > 0) {
  let touched = Date.now();
  for (const ev of ["pointerdown", "keydown", "scroll"]) {
    document.addEventListener(ev, () => { touched = Date.now(); }, { passive: true });
  }
  setInterval(() => {
    if (!document.hidden && Date.now() - touched > refresh * 1000) location.reload();
  }, refresh * 1000);
}

// The verdict form: remember who is using this tablet; say what the note is for.
const by = document.querySelector("form input[name=by]");
if (by) {
  try { by.value = by.value || localStorage.getItem("factory-agent.by") || ""; } catch (e) { /* private mode */ }
  by.form.addEventListener("submit", () => {
    try { localStorage.setItem("factory-agent.by", by.value.trim()); } catch (e) { /* private mode */ }
  });
  const note = by.form.querySelector("textarea[name=note]");
  for (const radio of by.form.querySelectorAll("input[name=verdict]")) {
    radio.addEventListener("change", () => {
      note.placeholder = radio.value === "confirmed"
        ? "What was found, e.g. bearing replaced"
        : "Optional: why it is normal, e.g. belt cleaning";
    });
  }
}
