// dawnchorus review: the page over the JSON API (plain JavaScript, no framework, no build step).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const PAGE = 100;
// verdicts: the active verdict of every judged item (ids name window and label), as the server has them
const state = { info: null, items: [], total: 0, index: -1, busy: false, verdicts: new Map() };
const UNDO_KEY = "dawnchorus.undo." + location.pathname;  // this tab's verdicts, newest last; kept on reload

function undoStack() {
  try {
    return JSON.parse(sessionStorage.getItem(UNDO_KEY) || "[]");
  } catch (error) {
    return [];
  }
}

function saveUndoStack(stack) {
  sessionStorage.setItem(UNDO_KEY, JSON.stringify(stack.slice(-200)));
}
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(withToken(path), Object.assign({}, options, { headers }));
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function option(select, value, text) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text;
  select.appendChild(node);
}

// ---- filters (kept in the address's #fragment, so a reload keeps them) -------------------------------

const FILTERS = ["order", "species", "file", "min_score", "max_score"];

function filters() {
  const params = new URLSearchParams();
  for (const name of FILTERS) if ($(name).value) params.set(name, $(name).value);
  if ($("unreviewed").checked) params.set("unreviewed", "1");
  return params;
}

function restoreFilters() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const name of FILTERS) if (params.has(name)) $(name).value = params.get(name);
  $("unreviewed").checked = params.get("unreviewed") === "1";
}

// ---- loading ---------------------------------------------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  $("run").textContent = info.results_dir + " · thresholds: " + info.threshold_source;
  for (const label of info.labels) {
    option($("species"), label, label);
    option($("labels"), label, label);
  }
  for (const rec of info.recordings) {
    option($("file"), rec.id, rec.file.split(/[\\/]/).pop() + (rec.found ? "" : " (not found)"));
    $("file").lastChild.title = rec.file;
  }
  $("reviewer").value = localStorage.getItem("dawnchorus.reviewer") || info.reviewer || "";
  $("export-raven").href = withToken("/api/export?format=raven");
  $("export-csv").href = withToken("/api/export?format=csv");
}

async function loadItems(append = false) {
  const params = filters();
  history.replaceState(null, "", "#" + params.toString());
  params.set("offset", append ? state.items.length : 0);
  params.set("limit", PAGE);
  try {
    const data = await api("/api/items?" + params.toString());
    state.items = append ? state.items.concat(data.items) : data.items;
    for (const item of data.items) {
      if (item.verdict) state.verdicts.set(item.id, item.verdict);
      else state.verdicts.delete(item.id);
    }
    state.total = data.total;
    say("");
  } catch (error) {
    say(error.message, true);
    state.items = [];
    state.total = 0;
  }
  renderList();
  if (!append) select(state.items.length ? 0 : -1);
}

async function loadProgress() {
  const data = await api("/api/progress");
  // species with detections first, then those with verdicts: with hundreds of labels the rest waits
  const species = data.species.slice().sort((a, b) => b.detections - a.detections || b.reviewed - a.reviewed);
  const rows = species.map((s) => {
    const tr = document.createElement("tr");
    for (const value of [s.label, s.detections, s.reviewed, s.present, s.absent, s.unsure, s.other]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    tr.dataset.label = s.label;
    return tr;
  });
  $("progress-rows").replaceChildren(...rows);
}

// ---- rendering ---------------------------------------------------------------------------------------------

const SIGN = { present: "✓", absent: "✗", unsure: "?", other: "→" };

function badge(node, verdict) {
  node.className = "badge" + (verdict ? " v-" + verdict.verdict : "");
  node.textContent = verdict ? SIGN[verdict.verdict] + (verdict.other_label ? " " + verdict.other_label : "") : "";
}

function renderList() {
  $("total").textContent = state.total + " item(s)";
  const rows = state.items.map((item, i) => {
    const li = document.createElement("li");
    li.dataset.index = i;
    li.dataset.id = item.id;
    const what = document.createElement("span");
    what.innerHTML = "<b></b> <span class='where'></span>";
    what.querySelector("b").textContent = item.label + " " + item.score.toFixed(3);
    what.querySelector(".where").textContent = item.file.split(/[\\/]/).pop() + " @" + item.start_s + " s";
    const mark = document.createElement("span");
    badge(mark, item.verdict);
    li.append(what, mark);
    li.addEventListener("click", () => select(i));
    if (i === state.index) li.classList.add("current");
    return li;
  });
  $("items").replaceChildren(...rows);
  $("more").hidden = state.items.length >= state.total;
}

function select(i) {
  state.index = i;
  const item = state.items[i];
  $("card").hidden = !item;
  $("empty").hidden = !!item;
  $("other-box").hidden = true;
  for (const li of $("items").children) li.classList.toggle("current", Number(li.dataset.index) === i);
  if (!item) return;
  $("items").children[i].scrollIntoView({ block: "nearest" });
  $("c-label").textContent = item.label;
  $("c-score").textContent = "score " + item.score.toFixed(3) + " (threshold " + item.threshold.toFixed(2) + ")";
  badge($("c-verdict"), item.verdict);
  $("c-where").textContent = item.file + ", " + item.start_s + "–" + item.end_s + " s";
  $("c-spec").src = withToken(item.spectrogram);
  renderLabels(item);
  $("note").value = item.verdict ? item.verdict.note || "" : "";
  $("player").removeAttribute("src");
}

// ---- actions -------------------------------------------------------------------------------------------------

function play(context) {
  const item = state.items[state.index];
  if (!item) return;
  const player = $("player");
  player.src = withToken(context ? item.audio_context : item.audio);
  player.play().catch((error) => say("cannot play: " + error.message, true));
}

// The item of ``label`` on the same window as ``item``.
function sibling(item, label) {
  return item.id.slice(0, item.id.length - item.label.length) + label;
}

// The window's labels by score, each with its verdict and buttons: a verdict per label.
function renderLabels(item) {
  const rows = item.top.map(([label, score]) => {
    const row = document.createElement("div");
    row.className = "label-row";
    row.dataset.label = label;
    const name = document.createElement("span");
    name.textContent = label + " " + score.toFixed(3) + (label === item.label ? " (this item)" : "");
    const mark = document.createElement("span");
    badge(mark, state.verdicts.get(sibling(item, label)));
    row.append(name, mark);
    if (label !== item.label) {
      for (const verdict of ["present", "absent", "unsure"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.labelVerdict = verdict;
        button.title = label + ": " + verdict;
        button.textContent = SIGN[verdict];
        button.addEventListener("click", () => give(verdict, null, label));
        row.appendChild(button);
      }
    }
    return row;
  });
  $("c-top").replaceChildren(...rows);
}

// Set the verdict of item ``id`` (null: none) here and in the list.
function applyVerdict(id, verdict) {
  if (verdict) state.verdicts.set(id, verdict);
  else state.verdicts.delete(id);
  for (const item of state.items) if (item.id === id) item.verdict = verdict;
}

// A verdict on the current item's label, or (``label``) on another label of its window.
async function give(verdict, otherLabel = null, label = null) {
  const item = state.items[state.index];
  if (!item || state.busy) return;
  label = label || item.label;
  if (verdict === "other" && !otherLabel) {
    $("other-box").hidden = false;
    $("other").value = "";
    $("other").focus();
    return;
  }
  const reviewer = $("reviewer").value.trim();
  localStorage.setItem("dawnchorus.reviewer", reviewer);
  const body = {
    item_id: item.id, label: label, verdict: verdict, other_label: otherLabel,
    note: $("note").value, reviewer: reviewer, queue: $("order").value,
  };
  state.busy = true;
  try {
    const saved = await api("/api/verdicts", { method: "POST", body: JSON.stringify(body) });
    applyVerdict(saved.item_id, saved);
    saveUndoStack(undoStack().concat([{ id: saved.id, item_id: saved.item_id, label: saved.label }]));
    say("saved: " + label + " " + verdict + (otherLabel ? " (" + otherLabel + ")" : ""));
    renderList();
    select(label === item.label ? Math.min(state.index + 1, state.items.length - 1) : state.index);
    loadProgress().catch((error) => say(error.message, true));
  } catch (error) {
    say("not saved: " + error.message, true);
  } finally {
    state.busy = false;
  }
}

async function undo() {
  const stack = undoStack();
  const last = stack.pop();
  if (!last) {
    say("nothing to undo");
    return;
  }
  try {
    await api("/api/verdicts/" + last.id, { method: "DELETE" });
  } catch (error) {
    say("undo failed: " + error.message, true);
    if (!/no verdict/.test(error.message)) return;  // already undone elsewhere: drop it from the stack
  }
  saveUndoStack(stack);
  const active = await api("/api/verdicts");
  const found = active.verdicts.find((v) => v.item_id === last.item_id && v.label === last.label);
  applyVerdict(last.item_id, found || null);
  say("undone: " + last.label + " (" + last.item_id.split(":")[1] / 1000 + " s)");
  const i = state.items.findIndex((item) => item.id === last.item_id);
  renderList();
  select(i >= 0 ? i : state.index);
  loadProgress().catch((error) => say(error.message, true));
}

function move(step) {
  if (!state.items.length) return;
  select(Math.max(0, Math.min(state.items.length - 1, state.index + step)));
}

const KEYS = {
  p: () => give("present"), a: () => give("absent"), u: () => give("unsure"), o: () => give("other"),
  1: () => give("present"), 2: () => give("absent"), 3: () => give("unsure"), 4: () => give("other"),
  z: undo, j: () => move(1), ArrowRight: () => move(1), ArrowDown: () => move(1),
  k: () => move(-1), ArrowLeft: () => move(-1), ArrowUp: () => move(-1),
  " ": () => play(false), c: () => play(true), n: () => $("note").focus(),
};

function onKey(event) {
  const field = event.target.closest("input, select, textarea");
  if (field) {
    if (event.key === "Escape") {
      field.blur();
      if (field.id === "other") $("other-box").hidden = true;
    }
    if (event.key === "Enter" && field.id === "other") {
      event.preventDefault();
      const name = $("other").value.trim();
      if (name) give("other", name).then(() => $("other").blur());
    } else if (event.key === "Enter" && field.id === "note") {
      event.preventDefault();
      field.blur();
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const action = KEYS[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// ---- start -------------------------------------------------------------------------------------------------

async function start() {
  document.addEventListener("keydown", onKey);
  for (const button of document.querySelectorAll("[data-verdict]")) {
    button.addEventListener("click", () => give(button.dataset.verdict));
  }
  $("undo").addEventListener("click", undo);
  $("play").addEventListener("click", () => play(false));
  $("play-context").addEventListener("click", () => play(true));
  $("other-ok").addEventListener("click", () => {
    const name = $("other").value.trim();
    if (name) give("other", name);
  });
  $("more").addEventListener("click", () => loadItems(true));
  $("filters").addEventListener("change", () => loadItems());
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("c-spec").addEventListener("error", () => say("spectrogram not available for this window", true));
  try {
    await loadInfo();
  } catch (error) {
    say(error.message, true);
    return;
  }
  restoreFilters();
  try {
    for (const v of (await api("/api/verdicts")).verdicts) state.verdicts.set(v.item_id, v);
  } catch (error) {
    say(error.message, true);
  }
  await loadItems();
  await loadProgress().catch((error) => say(error.message, true));
  document.body.dataset.ready = "1";
}

start();
