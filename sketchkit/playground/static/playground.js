// sketchkit playground: draw on the canvas, ask the local server for sketches, show them as SVG.
// Plain JavaScript, no build step, no network beyond this page's own server.
"use strict";

const SIZE = 400; // the canvas side in drawing units (the server maps these to the model's)
const SVG_NS = "http://www.w3.org/2000/svg";
const INK = "#212529"; // the drawn strokes
const MODEL = "#1c6fd1"; // the model's strokes
const $ = (id) => document.getElementById(id);

const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const state = {
  strokes: [], // the drawing: [[x, y], ...] per stroke, canvas units
  stroke: null, // the stroke being drawn
  model: null, // the picked model's name
  card: null, // its card from /api/model
  last: null, // the last action, re-run when the temperature changes
  a: null, b: null, // the ends of a morph
  request: 0, // only the newest response is shown
  timings: [], // {action, ms (click to drawn), sample_ms, seed}: read by the tests and the benchmark
  groups: null, // model name -> its picker group ("downloadable" ones download when picked)
  said: [], // every status line shown: read by the tests
};
window.playground = state;

// ---- drawing: pointer events, so mouse, pen and touch alike ------------------------------------
function setupCanvas() {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = SIZE * dpr;
  canvas.height = SIZE * dpr;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  redraw();
}

function at(e) {
  const r = canvas.getBoundingClientRect(); // the border box: the drawing starts inside the border
  const x = (e.clientX - r.left - canvas.clientLeft) * SIZE / canvas.clientWidth;
  const y = (e.clientY - r.top - canvas.clientTop) * SIZE / canvas.clientHeight;
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

function redraw() {
  ctx.clearRect(0, 0, SIZE, SIZE);
  ctx.lineWidth = 3;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.strokeStyle = INK;
  for (const line of state.strokes) {
    ctx.beginPath();
    ctx.moveTo(...line[0]);
    for (const p of line.length > 1 ? line.slice(1) : line) ctx.lineTo(...p);
    ctx.stroke();
  }
}

canvas.addEventListener("pointerdown", (e) => {
  if (e.pointerType === "mouse" && e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  state.stroke = [at(e)];
  state.strokes.push(state.stroke);
  redraw();
});
canvas.addEventListener("pointermove", (e) => {
  if (!state.stroke) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  for (const c of events.length ? events : [e]) state.stroke.push(at(c));
  redraw();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, (e) => {
    if (!state.stroke) return;
    const p = at(e), end = state.stroke[state.stroke.length - 1];
    if (type === "pointerup" && (p[0] !== end[0] || p[1] !== end[1])) state.stroke.push(p);
    state.stroke = null;
    redraw();
  });
}

function drawing(strokes = state.strokes) {
  return { strokes, width: SIZE, height: SIZE };
}

// ---- talking to the server ----------------------------------------------------------------------
async function call(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const res = await fetch("api/" + path, init);
  let doc;
  try { doc = await res.json(); } catch { doc = {}; }
  if (!res.ok) throw new Error(doc.error || `the server answered HTTP ${res.status}`);
  return doc;
}

function say(text, isError = false) {
  state.said.push(text);
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function options() {
  const seed = $("seed").value.trim();
  return { model: state.model, tau: Number($("tau").value), seed: seed === "" ? null : Number(seed) };
}

function count() {
  return Number($("k").value);
}

// ---- the actions: what each button asks for and how its grid is labelled ------------------------
const ACTIONS = {
  complete: () => ({
    body: { drawing: drawing(), k: count() },
    title: (d) => `${d.sketches.length} ways to finish your drawing`,
  }),
  generate: () => ({
    body: { n: count() }, title: (d) => `${d.sketches.length} fresh samples of ${d.model}`,
  }),
  reconstruct: () => ({
    body: { drawing: drawing(), n: count() },
    title: (d) => `${d.sketches.length} reconstructions of your drawing (decoded from its z)`,
  }),
  morph: () => {
    if (!state.a || !state.b) throw new Error("keep two drawings as A and B first");
    return {
      body: { a: drawing(state.a), b: drawing(state.b), steps: Math.max(2, count()) },
      title: (d) => `morph from A to B in ${d.sketches.length} steps (slerp in latent space)`,
    };
  },
};

async function run(action) {
  const started = performance.now();
  const id = ++state.request;
  state.last = action;
  try {
    const spec = ACTIONS[action]();
    say("sampling…");
    const doc = await call(action, { ...options(), ...spec.body });
    if (id !== state.request) return; // a newer request is on its way
    showGrid(doc, action, spec);
    await afterPaint();
    const ms = performance.now() - started;
    state.timings.push({ action, ms, sample_ms: doc.sample_ms, seed: doc.seed });
    say(`τ ${doc.tau} · seed ${doc.seed} · ${Math.round(ms)} ms (model ${Math.round(doc.sample_ms)} ms)`);
  } catch (err) {
    if (id === state.request) say(err.message, true);
  }
}

const afterPaint = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));

// ---- showing sketches ---------------------------------------------------------------------------
function sketchSvg(lines, drawn = 0, frame = false) {
  // the view: the sketch's bounding box (or the whole canvas, for the drawing itself), square, padded
  let [x0, y0, x1, y1] = frame ? [0, 0, SIZE, SIZE] : [Infinity, Infinity, -Infinity, -Infinity];
  for (const line of lines) {
    for (const [x, y] of line) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  }
  if (!Number.isFinite(x0)) [x0, y0, x1, y1] = [0, 0, 1, 1];
  const side = Math.max(x1 - x0, y1 - y0, 1) * 1.1;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("xmlns", SVG_NS);
  svg.setAttribute("viewBox", `${cx - side / 2} ${cy - side / 2} ${side} ${side}`);
  const g = document.createElementNS(SVG_NS, "g");
  for (const [k, v] of Object.entries({ fill: "none", "stroke-linecap": "round", "stroke-linejoin": "round" })) {
    g.setAttribute(k, v);
  }
  const width = (side / 150).toFixed(2); // about 2.5 pixels in a grid cell
  lines.forEach((line, i) => {
    const path = document.createElementNS(SVG_NS, "path");
    const pts = line.length > 1 ? line : [line[0], line[0]];
    path.setAttribute("d", "M" + pts.map(([x, y]) => `${x},${y}`).join("L"));
    path.setAttribute("stroke", i < drawn ? INK : MODEL);
    path.setAttribute("stroke-width", width);
    if (i < drawn) path.setAttribute("class", "drawn");
    g.append(path);
  });
  svg.append(g);
  return svg;
}

function showGrid(doc, action, spec) {
  const cells = doc.sketches.map((lines, i) => {
    const fig = document.createElement("figure");
    const svg = sketchSvg(lines, doc.drawn || 0);
    const caption = document.createElement("figcaption");
    const save = document.createElement("button");
    save.textContent = "SVG";
    save.title = "download this sketch as SVG";
    save.addEventListener("click", () => download(svg, `${doc.model.replace(/\W+/g, "-")}-${action}-${doc.seed}-${i}.svg`));
    caption.append(`#${i + 1}`, save);
    fig.append(svg, caption);
    return fig;
  });
  const grid = $("grid");
  grid.replaceChildren(...cells);
  grid.dataset.action = action;
  grid.dataset.seq = String(Number(grid.dataset.seq) + 1);
  $("title").textContent = spec.title(doc);
}

function download(svg, name) {
  const copy = svg.cloneNode(true);
  copy.setAttribute("width", "256");
  copy.setAttribute("height", "256");
  const [x, y, w, h] = copy.getAttribute("viewBox").split(" ");
  const bg = document.createElementNS(SVG_NS, "rect");
  for (const [k, v] of Object.entries({ x, y, width: w, height: h, fill: "white" })) bg.setAttribute(k, v);
  copy.prepend(bg);
  const blob = new Blob([new XMLSerializer().serializeToString(copy) + "\n"], { type: "image/svg+xml" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---- the model picker ---------------------------------------------------------------------------
const GROUP_LABELS = {
  "command line": "from the command line", shipped: "shipped with sketchkit", cached: "cached",
  downloadable: "downloadable (fetched on first use)", server: "on the Triton server",
};

// One optgroup per group, and the downloadable models one per set (as `sketchkit zoo list` shows them).
function groupLabel(m, sets) {
  if (m.group !== "downloadable" || !m.set) return GROUP_LABELS[m.group] || m.group;
  return `${sets[m.set] || m.set} (downloadable)`;
}

async function loadModels() {
  const doc = await call("models");
  const select = $("model");
  const groups = new Map();
  for (const m of doc.models) {
    const label = groupLabel(m, doc.sets || {});
    if (!groups.has(label)) {
      const og = document.createElement("optgroup");
      og.label = label;
      groups.set(label, og);
      select.append(og);
    }
    const opt = new Option(`${m.name} · ${m.kind || "?"} · ${m.license || "licence ?"}`, m.name);
    groups.get(label).append(opt);
  }
  state.groups = new Map(doc.models.map((m) => [m.name, m.group]));
  if (doc.default) await pick(doc.default);
}

// Keep the models whose name contains the filter (any case); the picked one always stays.
function filterModels(text) {
  const q = text.trim().toLowerCase();
  for (const og of $("model").querySelectorAll("optgroup")) {
    let shown = 0;
    for (const opt of og.children) {
      opt.hidden = Boolean(q) && !opt.value.toLowerCase().includes(q) && opt.value !== state.model;
      if (!opt.hidden) shown += 1;
    }
    og.hidden = shown === 0;
  }
}

async function pick(name) {
  const select = $("model");
  select.value = name;
  const download = state.groups && state.groups.get(name) === "downloadable";
  say(`opening ${name}…` + (download ? " (downloading and converting it first)" : ""));
  try {
    state.card = await call("model", { model: name });
    state.model = name;
  } catch (err) {
    select.value = state.model || "";
    say(err.message, true);
    return;
  }
  const c = state.card;
  $("card").textContent = `${c.kind} · ${c.cell} ${c.dec_size} · up to ${c.max_seq_len} points · licence ${c.license || "?"}`
    + (c.server ? ` · via ${c.server}` : " · in process");
  for (const b of document.querySelectorAll("button.vae")) {
    b.disabled = c.kind !== "vae";
    b.title = c.kind === "vae" ? "" : `${name} is decoder-only: this needs a vae model`;
  }
  say(`${name} ready: draw, then press "finish it"`);
}

// ---- wiring -------------------------------------------------------------------------------------
function keep(which) {
  if (!state.strokes.length) { say("draw something first", true); return; }
  state[which] = state.strokes.map((line) => line.slice());
  $("ends").replaceChildren(...[state.a, state.b].filter(Boolean).map((lines) => sketchSvg(lines, lines.length)));
  say(`kept as ${which.toUpperCase()}`);
}

$("finish").addEventListener("click", () => run("complete"));
$("generate").addEventListener("click", () => run("generate"));
$("reconstruct").addEventListener("click", () => run("reconstruct"));
$("morph").addEventListener("click", () => run("morph"));
$("keep-a").addEventListener("click", () => keep("a"));
$("keep-b").addEventListener("click", () => keep("b"));
$("undo").addEventListener("click", () => { state.strokes.pop(); redraw(); });
$("clear").addEventListener("click", () => { state.strokes = []; redraw(); });
$("save-drawing").addEventListener("click", () => download(sketchSvg(state.strokes, state.strokes.length, true), "drawing.svg"));
$("dice").addEventListener("click", () => { $("seed").value = String(Math.floor(Math.random() * 2 ** 31)); });
$("model").addEventListener("change", (e) => pick(e.target.value));
$("model-filter").addEventListener("input", (e) => filterModels(e.target.value));
$("tau").addEventListener("input", () => { $("tau-value").textContent = Number($("tau").value).toFixed(2); });
$("tau").addEventListener("change", () => { if (state.last) run(state.last); });

setupCanvas();
loadModels().catch((err) => say(err.message, true));
