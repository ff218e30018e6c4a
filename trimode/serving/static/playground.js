// trimode playground: streams a completion with `trace: true` and draws each forward's trace event
// (schema: trimode/generation/trace.py; over HTTP: trimode/serving/call.py). No dependencies.
"use strict";

const MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"];
const $ = (id) => document.getElementById(id);

// One mode's answer: its tokens by output position, its forwards, its stats.
class Panel {
  constructor(mode) {
    this.mode = mode;
    this.node = $("panel-template").content.firstElementChild.cloneNode(true);
    this.node.dataset.mode = mode;
    this.node.querySelector(".mode-name").textContent = mode;
    this.tokens = [];        // position -> {text, cls, conf}
    this.rejected = new Map(); // position -> [text, ...] drafts rejected right after that position
    this.histogram = [];     // accepted drafts per verification -> count
    this.emitted = 0;
    this.lastElapsed = 0;
  }

  place(pos, text, cls, conf) {
    this.tokens[pos] = {text, cls, conf};
  }

  onTrace(t) {
    const row = t.row;
    const text = (id) => (t.text && t.text[id] !== undefined ? t.text[id] : `[${id}]`);
    if (t.kind === "denoise") {
      for (const [pos, id, conf] of row.committed || []) this.place(pos, text(id), "diffusion", conf);
    } else if (t.kind === "verify" || t.kind === "draft+verify") {
      row.emitted.forEach((id, k) => this.place(row.start + k, text(id), k < row.accepted ? "accepted" : "bonus"));
      if (row.rejected && row.rejected.length && row.emitted.length > row.accepted) {
        this.rejected.set(row.start + row.accepted, row.rejected.map(text));
      }
      this.histogram[row.accepted] = (this.histogram[row.accepted] || 0) + 1;
    } else if (t.kind === "write") {
      row.emitted.forEach((id, k) => {
        const pos = row.start + k;
        const seed = k === row.emitted.length - 1 && !(this.tokens[pos] && this.tokens[pos].cls === "diffusion");
        if (!this.tokens[pos] || seed) this.place(pos, text(id), seed ? "ar" : "diffusion", null);
      });
    } else {
      row.emitted.forEach((id, k) => this.place(row.start + k, text(id), "ar"));
    }
    this.emitted += row.emitted.length;
    this.addForward(t);
    this.render(t);
  }

  addForward(t) {
    const box = document.createElement("span");
    box.className = `k-${t.kind}`;
    const ms = Math.max(0, (t.elapsed_s - this.lastElapsed) * 1000);
    this.lastElapsed = t.elapsed_s;
    box.style.width = `${Math.min(60, 4 + ms / 5)}px`;
    const parts = [`#${t.index} ${t.kind}`, `${ms.toFixed(1)} ms`];
    if (t.row.accepted !== null && t.row.accepted !== undefined) parts.push(`accepted ${t.row.accepted}`);
    if (t.row.masks_left !== null && t.row.masks_left !== undefined) parts.push(`masks left ${t.row.masks_left}`);
    box.title = parts.join(", ");
    this.node.querySelector(".timeline").appendChild(box);
  }

  render(t) {
    const out = this.node.querySelector(".output");
    out.replaceChildren();
    this.tokens.forEach((tok, pos) => {
      if (!tok) return;
      const span = document.createElement("span");
      span.className = `tok ${tok.cls}`;
      span.textContent = tok.text;
      if (tok.conf !== null && tok.conf !== undefined) {
        span.style.setProperty("--conf", tok.conf.toFixed(3));
        span.title = `confidence ${tok.conf.toFixed(3)}`;
      }
      out.appendChild(span);
      if (this.rejected.has(pos)) {  // the drafts the bonus token at pos replaced, struck through
        for (const text of this.rejected.get(pos)) {
          const ghost = document.createElement("span");
          ghost.className = "tok rejected";
          ghost.textContent = text;
          ghost.title = "rejected draft";
          out.appendChild(ghost);
        }
      }
    });
    const q = (sel) => this.node.querySelector(sel);
    q(".nfe").textContent = t.nfe;
    q(".tokens").textContent = this.emitted;
    q(".tpf").textContent = (this.emitted / t.nfe).toFixed(2);
    q(".tps").textContent = t.elapsed_s > 0 ? (this.emitted / t.elapsed_s).toFixed(1) : "–";
    this.renderHistogram();
  }

  renderHistogram() {
    const box = this.node.querySelector(".histogram");
    if (!this.histogram.length) return;
    box.hidden = false;
    box.replaceChildren();
    const counts = Array.from(this.histogram, (n) => n || 0);  // the array has holes: unseen counts
    const top = Math.max(...counts);
    counts.forEach((n, accepted) => {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.height = `${(48 * n) / top}px`;
      bar.title = `${n} cycle(s) accepted ${accepted} draft(s)`;
      const label = document.createElement("span");
      label.textContent = accepted;
      bar.appendChild(label);
      box.appendChild(bar);
    });
  }

  fail(message) {
    const box = this.node.querySelector(".panel-error");
    box.textContent = message;
    box.hidden = false;
  }
}

function requestBody(mode) {
  const body = {
    mode, stream: true, trace: true,
    max_tokens: Number($("max-tokens").value),
    block_length: Number($("block-length").value),
    temperature: Number($("temperature").value),
  };
  if (mode === "diffusion") body.threshold = Number($("threshold").value);
  const prompt = $("prompt").value;
  if ($("chat").checked) body.messages = [{role: "user", content: prompt}];
  else body.prompt = prompt;
  return body;
}

// POST, then read the SSE stream: `event: trace` messages go to the panel; an error message ends it.
async function stream(panel) {
  const body = requestBody(panel.mode);
  const url = body.messages ? "/v1/chat/completions" : "/v1/completions";
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON: keep the status */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      handle(buffer.slice(0, end), panel);
      buffer = buffer.slice(end + 2);
    }
  }
}

function handle(message, panel) {
  let event = "message";
  let data = "";
  for (const line of message.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data || data === "[DONE]") return;
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  if (event === "trace") panel.onTrace(chunk.trace);
}

async function run(event) {
  if (event) event.preventDefault();
  const error = $("error");
  error.hidden = true;
  const mode = $("mode").value;
  const panels = (mode === "race" ? MODES : [mode]).map((m) => new Panel(m));
  $("panels").replaceChildren(...panels.map((p) => p.node));
  $("run").disabled = true;
  document.body.dataset.state = "running";
  const results = await Promise.allSettled(panels.map((p) => stream(p)));
  results.forEach((r, i) => { if (r.status === "rejected") panels[i].fail(r.reason.message); });
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length === results.length) {
    error.textContent = [...new Set(failed)].join("\n");
    error.hidden = false;
  }
  $("run").disabled = false;
  document.body.dataset.state = "done";
}

async function init() {
  try {
    const card = (await (await fetch("/v1/models")).json()).data[0];
    $("model-name").textContent = card.id;
    if (card.chat) $("chat").checked = true;
    if (card.block_length) $("block-length").value = card.block_length;
    if (card.threshold !== undefined && card.threshold !== null) $("threshold").value = card.threshold;
  } catch (e) {
    $("model-name").textContent = "(unknown)";
  }
  $("controls").addEventListener("submit", run);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(e);
  });
  document.body.dataset.state = "ready";
}

// A recorded trace (trimode generate --trace out.html embeds one): draw it, no server to ask.
function showRecorded(data) {
  $("controls").hidden = true;
  $("model-name").textContent = data.model;
  $("prompt-shown").textContent = data.prompt;
  $("prompt-shown").hidden = false;
  const panels = Object.entries(data.traces).map(([mode, events]) => {
    const panel = new Panel(mode);
    events.forEach((event) => panel.onTrace(event));
    return panel;
  });
  $("panels").replaceChildren(...panels.map((p) => p.node));
  document.body.dataset.state = "done";
}

if (window.TRIMODE_RECORDED) showRecorded(window.TRIMODE_RECORDED);
else init();
