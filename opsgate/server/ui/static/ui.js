// opsgate approval UI: progressive enhancement only; every page works without it.
"use strict";

function remaining(ms) {
  if (ms <= 0) return "expired";
  const minutes = Math.floor(ms / 60000);
  if (minutes < 1) return "in under a minute";
  if (minutes < 120) return "in " + minutes + " min";
  return "in " + Math.floor(minutes / 60) + " h";
}

function tick() {
  for (const el of document.querySelectorAll("time[data-expires]")) {
    const at = Date.parse(el.dataset.expires);
    if (!Number.isNaN(at)) el.title = remaining(at - Date.now());
    if (!el.dataset.text) el.dataset.text = el.textContent;
    if (!Number.isNaN(at)) el.textContent = el.dataset.text + " (" + remaining(at - Date.now()) + ")";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 30000);
  // A decision is posted once: the buttons are disabled after the first submit.
  for (const form of document.querySelectorAll("form[data-once]")) {
    form.addEventListener("submit", () => {
      // After the form's data is taken (the clicked button's verdict included).
      setTimeout(() => {
        for (const b of form.querySelectorAll("button")) b.disabled = true;
      }, 0);
    });
  }
});
