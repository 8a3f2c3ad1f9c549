// kidrr serve's search page: only the public API (docs/serve.md, docs/web.md), no framework, no build.
// Ids, metadata and messages from the service are always set as text (textContent, alt), never as HTML.
"use strict";

const TOKEN_KEY = "kidrr-token";
const $ = (id) => document.getElementById(id);
const state = { info: null, run: 0, urls: [], photo: null, current: null };
window.kidrrTimings = [];   // query -> first thumbnail painted, ms (read by the browser test)

// ---- talking to the service --------------------------------------------------------------------
class ServiceError extends Error {
  constructor(status, kind, message) { super(message); this.status = status; this.kind = kind; }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  return headers;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One call: 401 asks for a token (then retries), 503 waits Retry-After once (then retries), other
// errors become a ServiceError carrying the service's own message.
async function call(path, options, as) {
  options = options || {};
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers: authHeaders(options.headers) }));
    } catch (err) {
      throw new ServiceError(0, "unreachable", "The service cannot be reached (" + err.message + ").");
    }
    if (response.status === 401 && attempt < 3) {
      await askToken();
      continue;
    }
    if (response.status === 503 && attempt === 0) {
      const wait = Math.min(10, Math.max(0, parseFloat(response.headers.get("Retry-After")) || 1));
      setStatus("The service is busy; retrying in " + wait + " s…");
      await sleep(wait * 1000);
      continue;
    }
    if (response.ok) return as === "blob" ? response.blob() : response.json();
    let kind = "http_error", message = "HTTP " + response.status;
    try {
      const body = await response.json();
      if (body && body.error) { kind = String(body.error.kind); message = String(body.error.message); }
    } catch (err) { /* not JSON: keep the status line */ }
    if (response.status === 503) message = "The service is busy: " + message + " Try again in a moment.";
    throw new ServiceError(response.status, kind, message);
  }
}

const getJSON = (path) => call(path, { method: "GET" });
const postJSON = (path, body) => call(path, { method: "POST", body: JSON.stringify(body),
                                              headers: { "Content-Type": "application/json" } });

function askToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    const form = $("token-form");
    const done = () => {
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      form.removeEventListener("submit", done);
      resolve();
    };
    form.addEventListener("submit", done);
    if (!dialog.open) dialog.showModal();
    $("token").focus();
  });
}

// ---- page state --------------------------------------------------------------------------------
function setStatus(text) { $("status").textContent = text; }

function showError(err) {
  const box = $("error");
  box.textContent = err ? (err.message || String(err)) : "";
  box.hidden = !err;
  if (err) setStatus("");
}

function busy(on, text) {
  $("results").setAttribute("aria-busy", on ? "true" : "false");
  if (on) setStatus(text || "Searching…");
}

function readURL() {
  const p = new URLSearchParams(location.search);
  return { q: p.get("q") || "", k: p.get("k") || "", like: p.get("like") || "",
           where: p.get("where") || "", dedup: p.get("dedup") === "1" };
}

function writeURL(s, push) {
  const p = new URLSearchParams();
  if (s.q) p.set("q", s.q);
  if (s.like) p.set("like", s.like);
  if (s.k) p.set("k", s.k);
  if (s.where) p.set("where", s.where);
  if (s.dedup) p.set("dedup", "1");
  const url = "/" + (p.toString() ? "?" + p.toString() : "");
  if (url !== location.pathname + location.search) {
    (push ? history.pushState : history.replaceState).call(history, null, "", url);
  }
}

// Two-stage search, as `kidrr search` does by default: the full scorer reranks the globals' best 100
// (or k if larger), within the service's max_shortlist; exact when that cannot hold k.
function shortlistFor(k) {
  const limits = state.info && state.info.settings && state.info.settings.limits;
  const cap = limits ? limits.max_shortlist : 100;
  const wanted = Math.min(cap, Math.max(k, 100));
  return wanted >= k ? wanted : null;
}

// ---- filters built from /v1/info's fields ------------------------------------------------------
function buildFilters(fields) {
  const box = $("filter-fields");
  box.textContent = "";
  const names = Object.keys(fields || {});
  if (!names.length) return;
  $("filters").hidden = false;
  for (const name of names) {
    const type = fields[name];
    const set = document.createElement("fieldset");
    const legend = document.createElement("legend");
    legend.textContent = name;
    set.appendChild(legend);
    const add = (suffix, labelText, input) => {
      input.id = "f-" + name + suffix;
      input.dataset.field = name;
      input.dataset.op = suffix.slice(1);
      input.dataset.type = type;
      const label = document.createElement("label");
      label.htmlFor = input.id;
      label.textContent = labelText + " ";
      set.appendChild(label);
      set.appendChild(input);
    };
    if (type === "bool") {
      const select = document.createElement("select");
      for (const [value, text] of [["", "any"], ["true", "yes"], ["false", "no"]]) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = text;
        select.appendChild(option);
      }
      add("-eq", "is", select);
    } else if (type === "number" || type === "date") {
      for (const [op, text] of [["gte", "from"], ["lte", "to"]]) {
        const input = document.createElement("input");
        input.type = type === "date" ? "date" : "number";
        if (type === "number") input.step = "any";
        add("-" + op, text, input);
      }
    } else {
      const input = document.createElement("input");
      input.type = "text";
      input.maxLength = 1024;
      add("-eq", type === "strings" ? "has" : "is", input);
    }
    box.appendChild(set);
  }
}

function filterFromInputs() {
  const parts = [];
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    const raw = input.value.trim();
    if (!raw) continue;
    const field = input.dataset.field, op = input.dataset.op, type = input.dataset.type;
    let value = raw;
    if (type === "number") value = Number(raw);
    if (type === "bool") value = raw === "true";
    parts.push(op === "eq" ? { [field]: value } : { [field]: { [op]: value } });
  }
  if (!parts.length) return "";
  return JSON.stringify(parts.length === 1 ? parts[0] : { and: parts });
}

function inputsFromFilter(text) {
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) input.value = "";
  if (!text) return;
  let doc;
  try { doc = JSON.parse(text); } catch (err) { return; }
  const parts = doc && Array.isArray(doc.and) ? doc.and : [doc];
  for (const part of parts) {
    if (!part || typeof part !== "object") continue;
    for (const [field, cond] of Object.entries(part)) {
      const conds = cond !== null && typeof cond === "object" && !Array.isArray(cond) ? cond : { eq: cond };
      for (const [op, value] of Object.entries(conds)) {
        const input = document.getElementById("f-" + field + "-" + op);
        if (input) input.value = String(value);
      }
    }
  }
}

// ---- results -----------------------------------------------------------------------------------
function clearResults() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  $("results").textContent = "";
  $("captions").hidden = true;
}

function thumbnailURL(id) {
  return "/v1/items/" + encodeURIComponent(id) + "/thumbnail";
}

// A thumbnail into `holder` (fetched with the token, shown through a blob: URL); its id as text when
// the gallery has none. onPaint runs once the image has been painted.
async function loadThumbnail(holder, id, onPaint) {
  const noImage = () => {
    const span = document.createElement("span");
    span.className = "noimg";
    span.textContent = id;
    holder.textContent = "";
    holder.appendChild(span);
  };
  if (!state.info || !state.info.thumbnails) { noImage(); return; }
  let blob;
  try {
    blob = await call(thumbnailURL(id), { method: "GET" }, "blob");
  } catch (err) {
    noImage();
    return;
  }
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  const img = document.createElement("img");
  img.alt = id;
  img.decoding = "async";
  img.addEventListener("load", () => {
    if (onPaint) requestAnimationFrame(() => requestAnimationFrame(onPaint));
  }, { once: true });
  img.src = url;
  holder.textContent = "";
  holder.appendChild(img);
}

function renderResults(results, run, started) {
  clearResults();
  const list = $("results");
  let painted = false;
  const firstPaint = () => {
    if (painted || run !== state.run) return;
    painted = true;
    const ms = performance.now() - started;
    performance.mark("kidrr-first-thumbnail");
    window.kidrrTimings.push(ms);
  };
  results.forEach((hit, i) => {
    const li = document.createElement("li");
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.id = hit.id;
    const holder = document.createElement("div");
    holder.className = "thumb";
    const caption = document.createElement("div");
    caption.className = "caption";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + (i + 1);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = Number(hit.score).toFixed(3);
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = hit.id;
    id.title = hit.id;
    caption.append(rank, score, id);
    card.append(holder, caption);
    card.setAttribute("aria-label", "#" + (i + 1) + " " + hit.id + ", score " + score.textContent);
    card.addEventListener("click", () => openDetail(hit.id));
    li.appendChild(card);
    list.appendChild(li);
    loadThumbnail(holder, hit.id, firstPaint);
  });
}

// ---- searching ---------------------------------------------------------------------------------
function parseWhere(text) {
  if (!text) return null;
  try { return JSON.parse(text); } catch (err) { throw new Error("The filter in this link is not valid JSON."); }
}

function currentK() {
  const k = parseInt($("k").value, 10);
  return Number.isFinite(k) && k > 0 ? k : 20;
}

async function run(what, push) {
  const runId = ++state.run;
  const started = performance.now();
  performance.mark("kidrr-query");
  showError(null);
  busy(true);
  const k = currentK();
  const where = what.where !== undefined ? what.where : filterFromInputs();
  const dedup = $("dedup").checked;
  try {
    let data;
    if (what.photo) {
      const params = new URLSearchParams({ k: String(k) });
      if (where) params.set("where", where);
      if (dedup) params.set("dedup", "0.95");
      writeURL({ k: String(k), where, dedup }, push);
      data = await call("/v1/search/similar/image?" + params.toString(),
                        { method: "POST", body: what.photo, headers: { "Content-Type": what.photo.type || "application/octet-stream" } });
    } else if (what.like) {
      writeURL({ like: what.like, k: String(k), where, dedup }, push);
      data = await postJSON("/v1/search/similar", { id: what.like, k: k, where: parseWhere(where),
                                                    dedup: dedup ? 0.95 : null });
    } else {
      writeURL({ q: what.q, k: String(k), where, dedup }, push);
      data = await postJSON("/v1/search/images", { query: what.q, k: k, shortlist: shortlistFor(k),
                                                   where: parseWhere(where), dedup: dedup ? 0.95 : null });
    }
    if (runId !== state.run) return;          // a newer search started meanwhile
    renderResults(data.results, runId, started);
    const about = what.photo ? "like your photo" : what.like ? "like " + what.like : "for “" + what.q + "”";
    setStatus(data.results.length ? data.results.length + " results " + about
                                  : "No photos match " + about + (where ? " with these filters" : "") + ".");
    if (what.photo && state.info && state.info.captions_image) describe(what.photo);
  } catch (err) {
    if (runId !== state.run) return;
    clearResults();
    showError(err);
  } finally {
    if (runId === state.run) busy(false);
  }
}

function runFromURL() {
  const s = readURL();
  if (s.k) $("k").value = s.k;
  inputsFromFilter(s.where);
  $("dedup").checked = s.dedup;
  $("q").value = s.q;
  // A shared link's filter that the inputs cannot show (e.g. "or") is sent as it is, for the service to judge.
  const where = s.where && filterFromInputs() !== s.where ? s.where : undefined;
  if (s.like) run({ like: s.like, where: where }, false);
  else if (s.q) run({ q: s.q, where: where }, false);
  else { clearResults(); setStatus(""); showError(null); }
}

async function describe(blob) {
  try {
    const data = await call("/v1/search/captions/image?k=5", { method: "POST", body: blob,
                                                               headers: { "Content-Type": blob.type || "image/jpeg" } });
    const list = $("caption-list");
    list.textContent = "";
    for (const hit of data.results) {
      const li = document.createElement("li");
      li.textContent = hit.caption + " (" + Number(hit.score).toFixed(3) + ")";
      list.appendChild(li);
    }
    $("captions").hidden = false;
  } catch (err) {
    showError(err);
  }
}

// ---- the detail view ---------------------------------------------------------------------------
async function openDetail(id) {
  const dialog = $("detail");
  state.current = id;
  $("detail-id").textContent = id;
  const meta = $("detail-meta");
  meta.textContent = "";
  const holder = dialog.querySelector(".detail-image");
  holder.textContent = "";
  $("describe").hidden = true;
  if (!dialog.open) dialog.showModal();
  $("more-like").hidden = !(state.info && state.info.similar);
  $("close-detail").focus();
  try {
    const item = await getJSON("/v1/items/" + encodeURIComponent(id));
    if (state.current !== id) return;
    for (const [key, value] of Object.entries(item.metadata || {})) {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
      meta.append(dt, dd);
    }
    if (item.thumbnail) {
      await loadThumbnail(holder, id);
      $("describe").hidden = !(state.info && state.info.captions_image);
    } else {
      holder.textContent = "(no thumbnail)";
    }
  } catch (err) {
    dialog.close();
    showError(err);
  }
}

function closeDetail() {
  const dialog = $("detail");
  if (dialog.open) dialog.close();
}

// ---- keyboard: arrows move through the results -------------------------------------------------
function onResultsKey(event) {
  const cards = Array.from($("results").querySelectorAll(".card"));
  const at = cards.indexOf(document.activeElement);
  if (at < 0) return;
  const top = cards[at].getBoundingClientRect().top;
  const perRow = Math.max(1, cards.filter((c) => c.getBoundingClientRect().top === top).length);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  const next = cards[Math.min(cards.length - 1, Math.max(0, at + step))];
  next.focus();
}

// ---- wiring ------------------------------------------------------------------------------------
function searchPhoto(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(new Error("“" + file.name + "” is not an image file; choose a JPEG or PNG photo."));
    return;
  }
  $("q").value = "";
  run({ photo: file }, true);
}

async function start() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("q").value.trim();
    if (!q) { showError(new Error("Type what the photo shows, e.g. “a dog on the grass”.")); return; }
    run({ q: q }, true);
  });
  $("k").addEventListener("change", () => {
    const s = readURL();
    if (s.q || s.like) run(s.like ? { like: s.like } : { q: s.q }, true);
  });
  $("clear-filters").addEventListener("click", () => { inputsFromFilter(""); $("dedup").checked = false; });
  $("photo").addEventListener("change", (event) => searchPhoto(event.target.files[0]));
  document.addEventListener("dragover", (event) => {
    if (!state.info || !state.info.similar_image) return;
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    if (state.info && state.info.similar_image) searchPhoto(event.dataTransfer.files[0]);
  });
  $("results").addEventListener("keydown", onResultsKey);
  $("more-like").addEventListener("click", () => {
    const id = state.current;
    closeDetail();
    $("q").value = "";
    run({ like: id }, true);
  });
  $("describe").addEventListener("click", async () => {
    const img = $("detail").querySelector(".detail-image img");
    if (!img) return;
    const blob = await (await fetch(img.src)).blob();
    closeDetail();
    describe(blob);
  });
  $("close-detail").addEventListener("click", closeDetail);
  window.addEventListener("popstate", runFromURL);

  try {
    state.info = await getJSON("/v1/info");
  } catch (err) {
    showError(err);
    return;
  }
  const maxK = state.info.settings && state.info.settings.limits ? state.info.settings.limits.max_k : 100;
  for (const option of Array.from($("k").options)) if (Number(option.value) > maxK) option.remove();
  $("by-photo").hidden = !state.info.similar_image;
  buildFilters(state.info.fields);
  if (!state.info.fields || !Object.keys(state.info.fields).length) {
    $("filters").hidden = false;          // the near-duplicate toggle works without metadata
  }
  runFromURL();
}

document.addEventListener("DOMContentLoaded", start);
