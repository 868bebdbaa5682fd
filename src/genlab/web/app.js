// genlab's web UI: a client of the same OpenAI API that any SDK uses (nothing here is private).
// Streams are read with fetch, since EventSource cannot POST.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { chat: [], abort: null, frames: [], models: [] };

// ---- the API key: asked once when the server answers 401 (genlab serve --api-key), then kept ----
const KEY = "genlab-api-key";

async function api(url, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = localStorage.getItem(KEY);
    const headers = { ...(init.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    const response = await fetch(url, { ...init, headers });
    if (response.status !== 401 || attempt > 0) return response;
    const given = window.prompt(key ? "That API key was refused. API key:" : "This server needs an API key:");
    if (!given) return response;
    localStorage.setItem(KEY, given.trim());
  }
}

// ---- Server-Sent Events over fetch: yields each `data:` payload, parsed -------------------------
async function* events(url, body, signal) {
  const response = await api(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new Error(parsed.error.message);
        yield parsed;
      }
    }
  }
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));

// ---- models and health -------------------------------------------------------------------------
async function waitUntilReady() {
  const badge = $("health");
  for (;;) {
    try {
      const response = await fetch("/health");
      if (response.ok) { badge.textContent = "ready"; badge.className = "badge ok"; break; }
      const body = await response.json().catch(() => ({}));
      if (response.status === 500) { badge.textContent = "error"; badge.className = "badge error"; showError(body.error); return; }
      badge.textContent = "loading models…";
    } catch (e) { badge.textContent = "server unreachable"; }
    await new Promise((r) => setTimeout(r, 1000));
  }
  const listed = await api("/v1/models");
  if (!listed.ok) { showError((await listed.json().catch(() => ({}))).error?.message || `HTTP ${listed.status}`); return; }
  state.models = (await listed.json()).data;
  for (const m of state.models) {
    if ((m.routes || []).includes("/v1/embeddings")) $("embed-model").append(new Option(m.id, m.id));
    if (m.kind === "embedding") continue;  // /v1/embeddings only: the compare-texts panel
    const option = new Option(m.id + (m.size ? ` (${m.size})` : ""), m.id);
    $(m.kind === "text" ? "text-model" : "image-model").append(option);
  }
  const encoder = state.models.find((m) => m.kind === "embedding");  // a sentence encoder compares meanings best
  if (encoder) $("embed-model").value = encoder.id;
  $("image-model").addEventListener("change", imageOptions);
  imageOptions();
  document.body.dataset.ready = "1";
}

// The image options follow the chosen model: a GAN draws in one step with no guidance, a pixel GPT pixel by pixel.
function imageOptions() {
  const card = state.models.find((m) => m.id === $("image-model").value) || state.models.find((m) => m.samplers) || {};
  const samplers = card.samplers || [];
  $("sampler").replaceChildren(new Option("model's default", ""), ...samplers.map((s) => new Option(s, s)));
  const diffusion = card.family !== "gan" && card.model_kind !== "ar-image";
  for (const id of ["steps", "guidance"]) {
    const off = !diffusion || (id === "guidance" && Boolean(card.distilled_from)); // a student has its teacher's guidance built in
    $(id).disabled = off;
    if (off) $(id).value = "";
  }
}

// ---- text pane ---------------------------------------------------------------------------------
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text || "";
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

// One span per token, carrying the distribution it was drawn from (probability = exp(logprob)).
function addTokens(bubble, text, logprobs) {
  const tokens = (logprobs && logprobs.content) || [];
  const joined = tokens.map((t) => t.token).join("");
  const pieces = joined === text ? tokens.map((t) => [t.token, t]) : text ? [[text, tokens[0]]] : [];
  for (const [piece, info] of pieces) {
    if (!piece) continue;
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = piece;
    if (info) {
      const p = Math.exp(info.logprob);
      span.style.setProperty("--p", p.toFixed(3));
      span.dataset.p = p.toFixed(4);
      span.dataset.top = JSON.stringify(info.top_logprobs.map((c) => [c.token, Math.exp(c.logprob)]));
      span.dataset.token = info.token;
      span.title = `p = ${(100 * p).toFixed(1)}%`;
    }
    bubble.append(span);
  }
}

function showCandidates(span) {
  const popup = $("token-popup");
  if (!span || !span.dataset.top || !$("show-probs").checked) { popup.hidden = true; return; }
  const rows = JSON.parse(span.dataset.top).map(([token, p]) =>
    `<tr class="${token === span.dataset.token ? "chosen" : ""}"><td>${escapeHtml(JSON.stringify(token))}</td>` +
    `<td>${(100 * p).toFixed(1)}%</td><td style="width:5em"><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></td></tr>`);
  popup.innerHTML = `<div>chosen: <b>${escapeHtml(JSON.stringify(span.dataset.token))}</b>, p = ` +
    `${(100 * Number(span.dataset.p)).toFixed(1)}%</div><table>${rows.join("")}</table>`;
  const pane = $("text-pane").getBoundingClientRect(), r = span.getBoundingClientRect();
  popup.style.left = `${Math.min(r.left - pane.left, pane.width - 240)}px`;
  popup.style.top = `${r.bottom - pane.top + 4}px`;
  popup.hidden = false;
}

const escapeHtml = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.abort) return;
  $("chat-input").value = "";
  state.chat.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.dataset.streaming = "1";
  state.abort = new AbortController();
  $("chat-send").disabled = true; $("chat-stop").disabled = false;
  // A model without a chat template (pydoc-gpt, the masked-diffusion pydoc-mdlm) continues the text instead.
  const card = state.models.find((m) => m.id === $("text-model").value) || {};
  const chat = card.chat !== false;
  const unmasking = card.model_kind === "diffusion-lm";  // reveals a block at once: no per-token logprobs
  const route = chat ? "/v1/chat/completions" : "/v1/completions";
  const body = {
    model: $("text-model").value, stream: true, stream_options: { include_usage: true },
    temperature: number("temperature"), max_tokens: number("max-tokens"), seed: number("text-seed"),
    ...(chat ? { messages: state.chat, logprobs: true, top_logprobs: 5 } : { prompt: text, ...(unmasking ? {} : { logprobs: 5 }) }),
  };
  if (!chat) state.chat = [];  // a continuation keeps no conversation
  const start = performance.now();
  let first = null, tokens = 0, reply = "", finish = "done", guessed = null;
  const stats = (finished) => {
    const now = performance.now();
    const rate = tokens > 1 && first ? (tokens - 1) / ((now - first) / 1000) : 0;
    // speculative decoding (on by default): how many of the tokens it guessed the model kept
    const kept = guessed && guessed.draft_tokens ? ` · ${guessed.accepted_tokens} of ${guessed.draft_tokens} guessed tokens kept` : "";
    $("text-stats").textContent = `time to first token ${first ? ((first - start) / 1000).toFixed(2) : "–"} s · ` +
      `${rate.toFixed(1)} tokens/s · ${tokens} tokens${kept}${finished ? ` · ${finished}` : ""}`;
  };
  try {
    for await (const chunk of events(route, body, state.abort.signal)) {
      if (chunk.usage) { tokens = chunk.usage.completion_tokens; guessed = chunk.usage.speculative; continue; }
      const choice = chunk.choices[0];
      if (choice.finish_reason) {  // "length" means the reply was cut at max tokens: say so
        finish = choice.finish_reason === "length" ? "cut off at max tokens" : "done";
        continue;
      }
      const piece = (chat ? choice.delta.content : choice.text) || "";
      const logprobs = chat ? choice.logprobs : completionLogprobs(choice.logprobs);
      const count = logprobs ? logprobs.content.length : (piece && unmasking ? 1 : 0);
      if (!piece && !count) continue;
      if (first === null) first = performance.now();
      tokens += count;
      reply += piece;
      addTokens(bubble, piece, logprobs);
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
      stats();
    }
    stats(finish);
  } catch (e) {
    if (e.name === "AbortError") stats("stopped"); else { bubble.classList.add("error"); bubble.textContent = e.message; }
  } finally {
    if (!chat) state.chat = [];
    else if (reply) state.chat.push({ role: "assistant", content: reply });
    else state.chat.pop();  // no answer: forget the question too, so the next turn is not two user messages in a row
    delete bubble.dataset.streaming;
    bubble.dataset.done = "1";
    state.abort = null;
    $("chat-send").disabled = false; $("chat-stop").disabled = true;
  }
}

// /v1/completions' legacy logprobs (tokens, token_logprobs, top_logprobs) in the chat form addTokens reads.
function completionLogprobs(lp) {
  if (!lp || !lp.tokens) return null;
  return { content: lp.tokens.map((token, i) => ({
    token, logprob: lp.token_logprobs[i],
    top_logprobs: Object.entries(lp.top_logprobs?.[i] || {}).map(([t, logprob]) => ({ token: t, logprob })),
  })) };
}

// ---- image pane --------------------------------------------------------------------------------
function showFrame(i) {
  const frame = state.frames[i];
  if (!frame) return;
  const view = document.querySelector("input[name=view]:checked").value;
  $("image-preview").src = "data:image/png;base64," + (view === "xt" && frame.xt ? frame.xt : frame.x0);
  $("image-step").textContent = frame.label;
}

async function generateImage(event) {
  event.preventDefault();
  const button = $("image-go");
  button.disabled = true;
  state.frames = [];
  const slider = $("trajectory");
  slider.disabled = true;
  const body = {
    prompt: $("image-prompt").value, model: $("image-model").value || undefined, stream: true,
    steps: number("steps"), sampler: $("sampler").value || undefined, guidance_scale: number("guidance"), seed: number("image-seed"),
    ...controlFields(),
  };
  $("image-stats").textContent = "";
  const start = performance.now();
  try {
    for await (const e of events("/v1/images/generations", body)) {
      if (e.type === "image_generation.partial_image") {
        state.frames.push({ x0: e.b64_json, xt: e.xt_b64_json, label: `step ${e.step}/${e.total_steps}` });
        $("image-progress").max = e.total_steps; $("image-progress").value = e.step;
        showFrame(state.frames.length - 1);
        $("image-stats").textContent = `${(e.elapsed_s / e.step).toFixed(3)} s/step so far`;
      } else if (e.type === "image_generation.completed" && e.index === 0) {
        state.frames.push({ x0: e.b64_json, xt: e.b64_json, label: `final · seed ${e.seed}` });
        const t = e.timings;
        $("image-stats").textContent = `${t.s_per_step.toFixed(3)} s/step · ${t.s_per_image.toFixed(2)} s/image · ` +
          `${t.model_calls} model calls · seed ${e.seed} · ${((performance.now() - start) / 1000).toFixed(2)} s in the browser`;
      }
    }
    slider.max = Math.max(state.frames.length - 1, 0);
    slider.value = slider.max;
    slider.disabled = state.frames.length < 2;
    showFrame(state.frames.length - 1);
    $("image-preview").dataset.done = "1";
    $("edit-go").disabled = false;
  } catch (e) {
    showError(e.message);
    $("image-step").textContent = "failed: " + e.message;
  } finally {
    button.disabled = false;
  }
}

// ---- edits: the picture shown, sent back as multipart with the prompt (img2img, or inpainting the sketch) ----
async function pngBlob(source, size) {
  // a PNG of `source` (an <img> or a canvas) at size x size pixels
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, size, size);
  ctx.drawImage(source, 0, 0, size, size);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function editImage() {
  const last = state.frames[state.frames.length - 1];
  if (!last) return;
  const picture = new Image();
  picture.src = "data:image/png;base64," + last.x0;
  await picture.decode();
  const form = new FormData();
  form.append("image", await pngBlob(picture, picture.naturalWidth), "picture.png");
  if ($("edit-masked").checked) {
    if (!pad.sketched) { showError("sketch the area to repaint first (layout and sketch, then draw: sketch)"); return; }
    form.append("mask", await pngBlob(pad.sketch, picture.naturalWidth), "mask.png");  // white strokes: repaint
  } else {
    form.append("strength", $("edit-strength").value);
  }
  form.append("prompt", $("image-prompt").value);
  for (const [field, value] of [["model", $("image-model").value], ["seed", $("image-seed").value], ["steps", $("steps").value]]) {
    if (value) form.append(field, value);
  }
  $("edit-go").disabled = true;
  try {
    const response = await api("/v1/images/edits", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
    state.frames.push({ x0: answer.data[0].b64_json, xt: answer.data[0].b64_json, label: `edited · seed ${answer.seed}` });
    $("trajectory").max = state.frames.length - 1; $("trajectory").value = state.frames.length - 1;
    showFrame(state.frames.length - 1);
    $("image-stats").textContent = `edited in ${answer.timings.seconds.toFixed(2)} s · ${answer.timings.model_calls} model calls`;
    $("image-preview").dataset.edited = String(state.frames.length);
  } catch (e) {
    showError(e.message);
  } finally {
    $("edit-go").disabled = false;
  }
}

// ---- embeddings: each text's vector, and the cosine similarity of every pair --------------------
async function compareTexts() {
  const texts = $("embed-input").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) { showError("write one text per line"); return; }
  const response = await api("/v1/embeddings", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: $("embed-model").value, input: texts }),
  });
  const answer = await response.json();
  if (!response.ok) { showError(answer.error ? answer.error.message : `HTTP ${response.status}`); return; }
  const vectors = answer.data.map((d) => d.embedding);  // normalised: the dot product is the cosine
  const cos = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
  const table = $("embed-table");
  table.replaceChildren();
  const head = table.insertRow();
  head.insertCell().textContent = `${vectors[0].length} dimensions`;
  texts.forEach((_, j) => { head.insertCell().textContent = `#${j + 1}`; });
  texts.forEach((text, i) => {
    const row = table.insertRow();
    row.insertCell().textContent = `#${i + 1} ${text}`;
    vectors.forEach((v) => {
      const cell = row.insertCell();
      const c = cos(vectors[i], v);
      cell.textContent = c.toFixed(2);
      cell.style.background = `hsl(${Math.max(0, c) * 120}, 70%, 85%)`;
    });
  });
  table.dataset.done = "1";
}

// ---- spatial control: boxes (a layout) and a sketch, drawn on a 256x256 canvas over the 32x32 picture ----
const COLORS = { red: "#e61e1e", orange: "#ff8c00", yellow: "#f5eb14", green: "#1ec832", blue: "#2850ff", purple: "#a028e6" };
const SHAPES = ["circle", "square", "triangle"];
const PIXEL = 8;  // canvas pixels per picture pixel
const pad = { boxes: [], sketched: false, drag: null, sketch: document.createElement("canvas") };
pad.sketch.width = pad.sketch.height = 256;

function controlFields() {
  const fields = {};
  if (pad.boxes.length) Object.assign(fields, { layout: { objects: pad.boxes }, prompt: "" });  // the boxes name the objects
  if (pad.sketched) fields.control = pad.sketch.toDataURL("image/png");
  return fields;
}

function drawPad(preview) {
  const ctx = $("control-canvas").getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 256, 256);
  ctx.drawImage(pad.sketch, 0, 0);
  for (const o of preview ? [...pad.boxes, preview] : pad.boxes) {
    const [x0, y0, x1, y1] = o.box.map((v) => v * PIXEL);
    ctx.strokeStyle = COLORS[o.color]; ctx.lineWidth = 2; ctx.strokeRect(x0 + 1, y0 + 1, x1 - x0 - 2, y1 - y0 - 2);
    ctx.fillStyle = COLORS[o.color]; ctx.font = "12px system-ui"; ctx.fillText(o.shape, x0 + 4, y0 + 14);
  }
  $("control-list").textContent = pad.boxes.length || pad.sketched
    ? [...pad.boxes.map((o) => `${o.color} ${o.shape} [${o.box.join(", ")}]`), pad.sketched ? "sketch" : ""].filter(Boolean).join(" · ")
    : "drag on the square to place an object (the picture is 32x32 pixels)";
}

function padPoint(e) {  // canvas pixels, whatever size the canvas is shown at
  const r = $("control-canvas").getBoundingClientRect();
  return [Math.max(0, Math.min(256, (e.clientX - r.left) * 256 / r.width)), Math.max(0, Math.min(256, (e.clientY - r.top) * 256 / r.height))];
}

function boxFrom([ax, ay], [bx, by]) {  // picture pixels, at least 8x8 (the smallest shape), inside the picture
  let [x0, x1] = [Math.floor(Math.min(ax, bx) / PIXEL), Math.ceil(Math.max(ax, bx) / PIXEL)];
  let [y0, y1] = [Math.floor(Math.min(ay, by) / PIXEL), Math.ceil(Math.max(ay, by) / PIXEL)];
  x1 = Math.min(32, Math.max(x1, x0 + 8)); x0 = Math.min(x0, x1 - 8);
  y1 = Math.min(32, Math.max(y1, y0 + 8)); y0 = Math.min(y0, y1 - 8);
  return [x0, y0, x1, y1];
}

function padDown(e) {
  const p = padPoint(e);
  pad.drag = { start: p, last: p };
  $("control-canvas").setPointerCapture?.(e.pointerId);
}

function padMove(e) {
  if (!pad.drag) return;
  const p = padPoint(e);
  if ($("control-mode").value === "sketch") {
    const ctx = pad.sketch.getContext("2d");
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 10; ctx.lineCap = "round";
    ctx.beginPath(); ctx.moveTo(...pad.drag.last); ctx.lineTo(...p); ctx.stroke();
    pad.sketched = true; pad.drag.last = p;
    drawPad();
  } else {
    pad.drag.last = p;
    drawPad({ color: $("box-color").value, shape: $("box-shape").value, box: boxFrom(pad.drag.start, p) });
  }
}

function padUp(e) {
  if (!pad.drag) return;
  if ($("control-mode").value === "boxes" && pad.boxes.length < 3) {
    pad.boxes.push({ color: $("box-color").value, shape: $("box-shape").value, box: boxFrom(pad.drag.start, padPoint(e)) });
  }
  pad.drag = null;
  drawPad();
}

function padClear() {
  pad.boxes = []; pad.sketched = false;
  pad.sketch.getContext("2d").clearRect(0, 0, 256, 256);
  drawPad();
}

for (const c of Object.keys(COLORS)) $("box-color").add(new Option(c, c));
for (const s of SHAPES) $("box-shape").add(new Option(s, s));
$("control-canvas").addEventListener("pointerdown", padDown);
$("control-canvas").addEventListener("pointermove", padMove);
$("control-canvas").addEventListener("pointerup", padUp);
$("control-clear").addEventListener("click", padClear);
drawPad();

// ---- wiring ------------------------------------------------------------------------------------
$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-stop").addEventListener("click", () => state.abort && state.abort.abort());
$("chat-clear").addEventListener("click", () => { state.chat = []; $("chat-log").innerHTML = ""; $("text-stats").textContent = ""; });
$("show-probs").addEventListener("change", (e) => {
  $("chat-log").classList.toggle("probs", e.target.checked);
  if (!e.target.checked) $("token-popup").hidden = true;
});
$("chat-log").addEventListener("mouseover", (e) => showCandidates(e.target.closest(".tok")));
$("chat-log").addEventListener("mouseleave", () => { $("token-popup").hidden = true; });
$("image-form").addEventListener("submit", generateImage);
$("edit-go").addEventListener("click", editImage);
$("embed-go").addEventListener("click", compareTexts);
$("trajectory").addEventListener("input", (e) => showFrame(Number(e.target.value)));
document.querySelectorAll("input[name=view]").forEach((r) => r.addEventListener("change", () =>
  showFrame($("trajectory").disabled ? state.frames.length - 1 : Number($("trajectory").value))));
waitUntilReady();
