// The ranking page: a client of the same OpenAI and feedback routes every other client uses.
// The key lives in sessionStorage (this tab only). A submission is kept there too until the gateway
// has it, and resent after a reload with the same idempotency keys, so it is never counted twice.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
let model = null;
let current = null; // {requestId, source: "ask" | "label", itemId}
let cards = []; // [{id, text, tie}] in the order the person put them; tie: same rank as the card before

// ---- talking to the gateway ---------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${store.getItem("key")}`, ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new Error("Cannot reach the gateway. Check the connection and try again.");
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const retry = response.headers.get("Retry-After");
    return body.error.message + (retry ? ` (try again in ${retry} s)` : "");
  } catch (e) {
    return `The gateway answered ${response.status} ${response.statusText}.`;
  }
}

function show(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

const fail = (e) => show("error", e.message);

// ---- signing in ---------------------------------------------------------------------------

async function signIn(key) {
  store.setItem("key", key);
  try {
    const me = await (await api("/v1/me")).json();
    model = (await (await api("/v1/models")).json()).data[0].id;
    $("who").textContent = `Signed in as ${me.name} (${me.role})`;
    $("who").hidden = false;
    $("tab-label").hidden = me.role !== "rater";
    $("tabs").hidden = false;
    $("sign-in").hidden = true;
    show("error");
    select("ask");
    await resendPending();
  } catch (e) {
    store.removeItem("key");
    fail(e);
  }
}

function signOut() {
  store.clear();
  location.reload();
}

function select(tab) {
  for (const name of ["ask", "label", "versions"]) {
    $(`tab-${name}`).setAttribute("aria-pressed", tab === name);
    $(name).hidden = tab !== name;
  }
  $("rank").hidden = true;
  current = null;
}

// ---- asking: K answers, streamed side by side ---------------------------------------------

async function ask(prompt, k) {
  show("error");
  show("status");
  $("ask-button").disabled = true;
  cards = Array.from({ length: k }, () => ({ id: null, text: "", tie: false }));
  resetRanking();
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({ model, n: k, max_tokens: 64, temperature: 1, stream: true,
                             compare_versions: $("compare").checked,
                             messages: [{ role: "user", content: prompt }] }),
    });
    current = { source: "ask", requestId: null };
    await readStream(response);
  } catch (e) {
    fail(e);
  } finally {
    $("ask-button").disabled = false;
  }
}

async function readStream(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const events = buffered.split("\n\n");
    buffered = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      current.requestId = chunk.id;
      for (const c of chunk.choices || []) {
        const card = cards[c.index];
        card.id = c.id;
        card.text += (c.delta && c.delta.content) || "";
      }
      renderCards();
    }
  }
}

// ---- labelling: one item at a time from the queue -----------------------------------------

async function nextItem() {
  show("error");
  try {
    const next = await (await api("/v1/labelling/next")).json();
    $("label-stats").textContent = `You ranked ${next.done_today} today · ${next.waiting} items waiting`;
    if (!next.item) {
      $("label-prompt").textContent = "Nothing to label right now.";
      $("rank").hidden = true;
      return;
    }
    // The item already on screen (a second click, or a slow answer to an earlier one) keeps the
    // order the rater has made so far.
    if (current && current.source === "label" && current.requestId === next.item.request_id && !$("rank").hidden) return;
    $("label-prompt").textContent = next.item.prompt;
    current = { source: "label", requestId: next.item.request_id, itemId: next.item.item_id };
    cards = next.item.candidates.map((c) => ({ id: c.id, text: c.text, tie: false }));
    resetRanking();
  } catch (e) {
    fail(e);
  }
}

// ---- ranking: drag, or the keyboard alone -------------------------------------------------

function resetRanking() {
  $("all-bad").checked = false;
  $("better").value = "";
  $("rank").hidden = false;
  renderCards();
}

function ranks() {
  let rank = 0;
  return cards.map((c, i) => (i === 0 || !c.tie ? ++rank : rank));
}

function renderCards(focusIndex) {
  const list = $("cards");
  list.innerHTML = "";
  const numbers = ranks();
  cards.forEach((card, i) => {
    const li = document.createElement("li");
    li.className = "card" + (card.tie && i > 0 ? " tied" : "");
    li.tabIndex = 0;
    li.draggable = true;
    li.dataset.index = i;
    li.dataset.id = card.id || "";
    li.setAttribute("aria-label", `Rank ${numbers[i]}${card.tie && i > 0 ? ", tied with the one before" : ""}`);
    const head = document.createElement("div");
    head.innerHTML = `<span class="rank">#${numbers[i]}</span>`;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = card.text;
    li.append(head, text);
    if (i > 0) {
      const tie = document.createElement("button");
      tie.className = "tie";
      tie.type = "button";
      tie.tabIndex = -1;
      tie.textContent = card.tie ? "untie" : "= tie with the one before";
      tie.addEventListener("click", () => toggleTie(i));
      li.append(tie);
    }
    li.addEventListener("keydown", (e) => onKey(e, i));
    li.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(i)); li.classList.add("dragging"); });
    li.addEventListener("dragend", () => li.classList.remove("dragging"));
    li.addEventListener("dragover", (e) => e.preventDefault());
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      const from = Number(e.dataTransfer.getData("text/plain"));
      const box = li.getBoundingClientRect();
      const after = e.clientX > box.left + box.width / 2 || e.clientY > box.top + box.height * 0.75;
      moveTo(from, after ? i + (from < i ? 0 : 1) : i - (from < i ? 1 : 0));
    });
    list.append(li);
  });
  if (focusIndex !== undefined) list.children[focusIndex].focus();
}

function onKey(e, i) {
  const earlier = e.key === "ArrowLeft" || e.key === "ArrowUp";
  const later = e.key === "ArrowRight" || e.key === "ArrowDown";
  if (earlier && i > 0) moveTo(i, i - 1);
  else if (later && i < cards.length - 1) moveTo(i, i + 1);
  else if (e.key === "t" || e.key === "T") toggleTie(i);
  else return;
  e.preventDefault();
}

function moveTo(from, to) {
  const [card] = cards.splice(from, 1);
  cards.splice(to, 0, card);
  renderCards(to);
}

function toggleTie(i) {
  if (i === 0) return;
  cards[i].tie = !cards[i].tie;
  renderCards(i);
}

function groups() {
  const out = [];
  cards.forEach((c, i) => (i > 0 && c.tie ? out[out.length - 1].push(c.id) : out.push([c.id])));
  return out.map((g) => (g.length === 1 ? g[0] : g));
}

// ---- submitting: once, even across a reload ------------------------------------------------

function submission() {
  const base = `ui:${current.requestId}`;
  const items = [];
  if ($("all-bad").checked) {
    cards.forEach((c, i) => items.push({ kind: "rating", choice_id: c.id, rating: -1, idempotency_key: `${base}:bad:${i}` }));
  } else {
    items.push({ kind: "ranking", ranking: groups(), idempotency_key: `${base}:ranking` });
  }
  const better = $("better").value.trim();
  if (better) {
    items.push({ kind: "demonstration", request_id: current.requestId, response: better, idempotency_key: `${base}:demo` });
  }
  return { items, source: current.source };
}

async function submit() {
  if (!current || !current.requestId || cards.some((c) => !c.id)) {
    show("error", "Wait until every answer has arrived.");
    return;
  }
  store.setItem("pending", JSON.stringify(submission()));
  await sendPending(false);
}

async function sendPending(afterReload) {
  const pending = JSON.parse(store.getItem("pending"));
  show("error");
  $("submit").disabled = true;
  try {
    const response = await api("/v1/feedback/batch", { method: "POST", body: JSON.stringify({ items: pending.items }) });
    const accepted = (await response.json()).accepted;
    store.removeItem("pending");
    const again = accepted.every((a) => a.duplicate);
    show("status", afterReload ? `Your submission from before the reload is recorded (${accepted.length} items).`
      : again ? "This was already recorded." : `Thank you: recorded ${accepted.length} items.`);
    $("rank").hidden = true;
    if (pending.source === "label" && !afterReload) await nextItem();
  } catch (e) {
    fail(e); // kept: submitting again sends the same idempotency keys
  } finally {
    $("submit").disabled = false;
  }
}

async function resendPending() {
  if (store.getItem("pending")) await sendPending(true);
}

// ---- versions: the leaderboard as a chart ---------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function showVersions() {
  show("error");
  try {
    const board = await (await api("/v1/leaderboard")).json();
    const rows = board.versions.filter((r) => r.vs_sft && r.vs_sft.rate !== null);
    const chart = $("chart");
    chart.replaceChildren(chart.firstElementChild); // keep the title
    const rowH = 34, left = 70, width = 420;
    chart.setAttribute("height", rows.length ? rows.length * rowH + 30 : 0);
    chart.setAttribute("viewBox", `0 0 ${left + width + 150} ${rows.length * rowH + 30}`);
    const x = (rate) => left + rate * width;
    rows.forEach((r, i) => {
      const y = i * rowH + 6, [lo, hi] = r.vs_sft.interval_95;
      const g = svg("g", { class: "bar", "data-version": r.version });
      g.append(svg("text", { x: 0, y: y + 17 }, r.version));
      g.append(svg("rect", { x: left, y, width: r.vs_sft.rate * width, height: rowH - 12, fill: "#2357c6" }));
      g.append(svg("line", { x1: x(lo), x2: x(hi), y1: y + 11, y2: y + 11, stroke: "#1d2330", "stroke-width": 2 }));
      g.append(svg("text", { x: left + width + 8, y: y + 17 },
                    `${Math.round(100 * r.vs_sft.rate)}% (${Math.round(100 * lo)}-${Math.round(100 * hi)}%, n=${r.vs_sft.comparisons})`));
      chart.append(g);
    });
    const axis = rows.length * rowH + 20;
    chart.append(svg("line", { x1: x(0.5), x2: x(0.5), y1: 0, y2: axis - 8, stroke: "#b3261e", "stroke-dasharray": "4 3" }));
    chart.append(svg("text", { x: x(0.5) - 40, y: axis + 6 }, "50% = as SFT"));
    $("board-summary").textContent = rows.length
      ? `${board.outcomes} pairwise outcomes; serving ${board.serving}, SFT ${board.sft}.`
      : "No cross-version comparisons yet: they come from rankings made while a new version is tried out.";
  } catch (e) {
    fail(e);
  }
}

// ---- wiring ---------------------------------------------------------------------------------

for (let k = 2; k <= 9; k++) $("k").add(new Option(String(k), String(k), k === 4, k === 4));
$("sign-in-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
$("ask-form").addEventListener("submit", (e) => { e.preventDefault(); ask($("prompt").value, Number($("k").value)); });
$("tab-ask").addEventListener("click", () => select("ask"));
$("tab-label").addEventListener("click", () => { select("label"); nextItem(); });
$("tab-versions").addEventListener("click", () => { select("versions"); showVersions(); });
$("next-item").addEventListener("click", nextItem);
$("submit").addEventListener("click", submit);
$("sign-out").addEventListener("click", signOut);
if (store.getItem("key")) signIn(store.getItem("key"));
