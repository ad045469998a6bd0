// STAMP web demo: pick an image, ask, watch the answer stream in and each mask appear on the image
// in the colour of the phrase it belongs to. Plain JS, no build step; talks to /v1/segment/stream.
"use strict";

const SEG = "<|seg|>";
const FORCE_PREFIX = "Sure, it is <|seg|>";
const $ = (id) => document.getElementById(id);

const state = { blob: null, name: "", image: null, text: "", masks: [], busy: false };

function setStatus(message, kind) {
  const el = $("status");
  el.textContent = message;
  el.dataset.state = kind;
}

function updateButton() {
  $("run").disabled = state.busy || !state.image || !$("prompt").value.trim();
}

// ------------------------------------------------------------------ image
function setImage(blob, name) {
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.onload = () => {
    state.blob = blob;
    state.name = name;
    state.image = img;
    clearResult();
    setStatus(`Image ${name}: ${img.naturalWidth}x${img.naturalHeight}.`, "idle");
    updateButton();
  };
  img.onerror = () => setStatus(`${name} is not an image this browser can show.`, "error");
  img.src = url;
}

function clearResult() {
  state.text = "";
  state.masks = [];
  $("legend").replaceChildren();
  $("answer").replaceChildren();
  $("download-json").classList.add("hidden");
  draw();
}

// ------------------------------------------------------------------ samples and examples
function setExamples(prompts) {
  const box = $("examples");
  box.replaceChildren();
  for (const p of prompts) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = p;
    b.addEventListener("click", () => { $("prompt").value = p; updateButton(); });
    box.appendChild(b);
  }
}

async function loadSamples() {
  try {
    const info = await (await fetch("/v1/model")).json();
    let note = info.random_weights ? " (random weights: answers and masks are meaningless)" : "";
    if (info.note) note += ` (${info.note})`;
    $("model-info").textContent = `Model: ${info.name}${note}`;
    if (info.random_weights || info.bundled) $("model-info").classList.add("warn");
  } catch (e) { /* the page still works */ }
  const data = await (await fetch("/v1/samples")).json();
  const box = $("samples");
  setExamples(data.prompts);
  for (const s of data.samples) {
    const b = document.createElement("button");
    b.type = "button";
    b.title = s.prompts[0] || s.name;
    b.dataset.sample = s.name;
    const img = document.createElement("img");
    img.src = s.url;
    img.alt = s.name;
    b.appendChild(img);
    b.addEventListener("click", async () => {
      for (const other of box.children) other.classList.remove("selected");
      b.classList.add("selected");
      const blob = await (await fetch(s.url)).blob();
      setImage(blob, `${s.name}.png`);
      setExamples([...s.prompts, ...data.prompts]);
      if (s.prompts.length) $("prompt").value = s.prompts[0];
      updateButton();
    });
    box.appendChild(b);
  }
}

// ------------------------------------------------------------------ drawing
function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// Same look as stamp.outputs.overlay_masks: each mask blended at 50 % in its colour, outlined in it.
function draw() {
  const canvas = $("canvas");
  const img = state.image;
  if (!img) return;
  const w = img.naturalWidth, h = img.naturalHeight;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const ready = state.masks.filter((m) => m.bits);
  if (!ready.length) return;
  const frame = ctx.getImageData(0, 0, w, h);
  const px = frame.data;
  for (const m of ready) {
    const [r, g, b] = hexToRgb(m.color);
    const bits = m.bits;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        const o = 4 * i;
        if (!bits[i]) {  // just outside the mask: the dark halo of its two-tone outline
          if ((y > 0 && bits[i - w]) || (y < h - 1 && bits[i + w]) ||
            (x > 0 && bits[i - 1]) || (x < w - 1 && bits[i + 1])) {
            px[o] = 0; px[o + 1] = 0; px[o + 2] = 0;
          }
          continue;
        }
        const edge = (y > 0 && !bits[i - w]) || (y < h - 1 && !bits[i + w]) ||
          (x > 0 && !bits[i - 1]) || (x < w - 1 && !bits[i + 1]);
        if (edge) {
          px[o] = r; px[o + 1] = g; px[o + 2] = b;
        } else {
          px[o] = Math.round(0.5 * px[o] + 0.5 * r);
          px[o + 1] = Math.round(0.5 * px[o + 1] + 0.5 * g);
          px[o + 2] = Math.round(0.5 * px[o + 2] + 0.5 * b);
        }
      }
    }
  }
  ctx.putImageData(frame, 0, 0);
}

function decodeMaskPng(m) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, c.width, c.height).data;
      const bits = new Uint8Array(c.width * c.height);
      for (let i = 0; i < bits.length; i++) bits[i] = data[4 * i] > 127 ? 1 : 0;
      m.bits = bits;
      resolve();
    };
    img.onerror = () => resolve();
    img.src = `data:image/png;base64,${m.png}`;
  });
}

// ------------------------------------------------------------------ answer and legend
function renderAnswer() {
  const chars = Array.from(state.text); // the server's spans count code points
  const box = $("answer");
  box.replaceChildren();
  const byStart = new Map(), byEnd = new Map();
  for (const m of state.masks) {
    if (m.span[1] > m.span[0]) { byStart.set(m.span[0], m); byEnd.set(m.span[1], m); }
  }
  let plain = "", phrase = null, segIndex = 0, target = box;
  const flush = () => { if (plain) { target.appendChild(document.createTextNode(plain)); plain = ""; } };
  for (let i = 0; i <= chars.length; i++) {
    if (byEnd.has(i) && phrase) { flush(); target = box; phrase = null; }
    if (i === chars.length) break;
    if (byStart.has(i)) {
      flush();
      const m = byStart.get(i);
      phrase = document.createElement("span");
      phrase.className = "phrase";
      phrase.dataset.mask = m.index;
      phrase.style.backgroundColor = m.color + "55";
      phrase.style.borderBottom = `2px solid ${m.color}`;
      box.appendChild(phrase);
      target = phrase;
    }
    if (chars.slice(i, i + SEG.length).join("") === SEG) {
      flush();
      const chip = document.createElement("span");
      chip.className = "seg-chip";
      chip.dataset.mask = segIndex;
      const m = state.masks.find((x) => x.index === segIndex);
      chip.textContent = `mask ${segIndex}`;
      if (m) chip.style.backgroundColor = m.color;
      box.appendChild(chip);
      segIndex += 1;
      i += SEG.length - 1;
      continue;
    }
    plain += chars[i];
  }
  flush();
}

function addLegend(m) {
  const li = document.createElement("li");
  li.className = "mask-item";
  li.dataset.mask = m.index;
  li.dataset.color = m.color;
  const sw = document.createElement("span");
  sw.className = "swatch";
  sw.style.backgroundColor = m.color;
  li.appendChild(sw);
  const label = document.createElement("span");
  label.className = "label";
  const phrase = m.phrase ? `"${m.phrase}"` : "(no phrase)";
  label.textContent = `mask ${m.index} ${phrase}: ${m.area} px, score ${m.score.toFixed(3)}`;
  li.appendChild(label);
  const a = document.createElement("a");
  a.className = "download-mask";
  a.href = `data:image/png;base64,${m.png}`;
  a.download = `mask_${m.index}.png`;
  a.textContent = "download PNG";
  li.appendChild(a);
  $("legend").appendChild(li);
}

// ------------------------------------------------------------------ request
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

async function run() {
  if (!state.image) return;
  state.busy = true;
  updateButton();
  clearResult();
  setStatus("Sending…", "running");
  const form = new FormData();
  form.append("image", state.blob, state.name);
  form.append("prompt", $("prompt").value);
  form.append("return_png", "true");
  if ($("force").checked) form.append("answer_prefix", FORCE_PREFIX);
  const pending = [];
  try {
    const response = await fetch("/v1/segment/stream", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const err = body.error || { code: response.status, message: response.statusText };
      setStatus(`Error (${err.code}): ${err.message}`, "error");
      return;
    }
    for await (const { event, data } of sseEvents(response)) {
      if (event === "start") setStatus("Generating…", "running");
      else if (event === "text") { state.text += data.delta; renderAnswer(); }
      else if (event === "mask") {
        state.masks.push(data);
        addLegend(data);
        renderAnswer();
        pending.push(decodeMaskPng(data).then(draw));
      } else if (event === "error") {
        setStatus(`Error (${data.error.code}): ${data.error.message}`, "error");
        return;
      } else if (event === "done") {
        await Promise.all(pending);
        state.text = data.text;
        renderAnswer();
        draw();
        const json = {
          text: data.text,
          finish_reason: data.finish_reason,
          masks: state.masks.map(({ bits, png, ...m }) => m),
          timings: data.timings,
        };
        const link = $("download-json");
        link.href = URL.createObjectURL(new Blob([JSON.stringify(json, null, 2)], { type: "application/json" }));
        link.classList.remove("hidden");
        const secs = data.timings.total.toFixed(2);
        const ended = {
          length: " The answer hit the token limit and may be cut off.",
          repetition: " The answer was stopped: it kept repeating itself.",
        }[data.finish_reason] || "";
        setStatus(`Done: ${data.masks} mask(s) in ${secs} s (batch of ${data.batch_size}).${ended}`, "done");
      }
    }
  } catch (e) {
    setStatus(`Error: ${e}`, "error");
  } finally {
    state.busy = false;
    updateButton();
  }
}

$("file").addEventListener("change", (e) => {
  const f = e.target.files[0];
  if (f) {
    for (const b of $("samples").children) b.classList.remove("selected");
    setImage(f, f.name);
  }
});
$("prompt").addEventListener("input", updateButton);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run();
});
$("run").addEventListener("click", run);
loadSamples().catch((e) => setStatus(`Could not load the samples: ${e}`, "error"));
