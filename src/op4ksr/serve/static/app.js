// op4ksr serve: upload, poll job states, compare before/after, download. No external code.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
let info = null;
const jobs = new Map(); // id -> {doc, row}
let shownId = null;

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function megabytes(bytes) {
  return (bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 1) + " MB";
}

async function loadInfo() {
  const response = await fetch("/api/info");
  info = await response.json();
  const modelSelect = $("model");
  for (const model of info.models) {
    modelSelect.add(new Option(`${model.name} (×${model.native_scale}, ${model.device})`, model.name));
  }
  modelSelect.value = info.default_model;
  modelSelect.disabled = info.models.length < 2;
  fillScales();
  modelSelect.addEventListener("change", fillScales);
  $("fidelity").addEventListener("input", () => {
    $("fidelity-value").textContent = Number($("fidelity").value).toFixed(2);
  });
  $("limits").textContent =
    `Limits: ${megabytes(info.max_upload_bytes)} per file, ${info.max_pixels.toLocaleString()} input pixels.`;
}

function fillScales() {
  const model = info.models.find((m) => m.name === $("model").value);
  const scaleSelect = $("scale");
  const previous = Number(scaleSelect.value) || info.default_scale;
  scaleSelect.replaceChildren(...model.scales.map((s) => new Option(`×${s}`, String(s))));
  scaleSelect.value = String(model.scales.includes(previous) ? previous : model.native_scale);
  // The fidelity slider only for models with a knob (a compensation part or a two-end pixel path).
  $("fidelity-label").hidden = model.fidelity === null || model.fidelity === undefined;
  if (!$("fidelity-label").hidden) {
    $("fidelity").value = String(model.fidelity);
    $("fidelity-value").textContent = Number(model.fidelity).toFixed(2);
  }
}

async function upload(file) {
  // Checked here for a quick answer; the server checks again (and checks the pixels).
  if (file.size > info.max_upload_bytes) {
    showError(`${file.name}: ${megabytes(file.size)} exceeds the upload limit of ${megabytes(info.max_upload_bytes)}`);
    return;
  }
  const params = new URLSearchParams({ name: file.name, model: $("model").value, scale: $("scale").value });
  if (!$("fidelity-label").hidden) params.set("fidelity", $("fidelity").value);
  let response;
  try {
    response = await fetch(`/api/jobs?${params}`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
  } catch (err) {
    showError(`${file.name}: upload failed (${err.message})`);
    return;
  }
  const doc = await response.json().catch(() => ({ error: `${file.name}: HTTP ${response.status}` }));
  if (!response.ok) {
    showError(doc.error || `${file.name}: HTTP ${response.status}`);
    return;
  }
  showError("");
  track(doc);
}

function track(doc) {
  const row = document.createElement("li");
  row.innerHTML = '<span class="name"></span><progress max="1"></progress><span class="state"></span>';
  row.querySelector(".name").textContent = doc.name;
  row.dataset.id = doc.id;
  row.addEventListener("click", () => {
    const entry = jobs.get(doc.id);
    if (entry.doc.state === "done") show(entry.doc);
  });
  $("jobs").prepend(row);
  jobs.set(doc.id, { doc, row });
  render(doc);
  poll(doc.id);
}

function render(doc) {
  const { row } = jobs.get(doc.id);
  jobs.get(doc.id).doc = doc;
  row.className = doc.state;
  row.dataset.state = doc.state;
  const bar = row.querySelector("progress");
  const state = row.querySelector(".state");
  bar.hidden = doc.state === "failed";
  if (doc.state === "queued") {
    bar.removeAttribute("value");
    state.textContent = doc.position ? `waiting, ${doc.position} ahead` : "waiting";
  } else if (doc.state === "running") {
    const elapsed = Date.now() / 1000 - doc.started;
    if (doc.expected_s) {
      // Estimated from this model's previous job (one model call: no finer progress exists).
      bar.value = Math.min(0.97, elapsed / doc.expected_s);
      state.textContent = `upscaling… ${Math.max(0, doc.expected_s - elapsed).toFixed(0)} s left`;
    } else {
      bar.removeAttribute("value");
      state.textContent = `upscaling… ${elapsed.toFixed(0)} s`;
    }
  } else if (doc.state === "done") {
    bar.value = 1;
    const [w, h] = doc.output_size;
    state.textContent = `done: ${w}×${h} in ${(doc.finished - doc.started).toFixed(1)} s`;
  } else {
    state.textContent = doc.error;
  }
}

async function poll(id) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    let doc;
    try {
      const response = await fetch(`/api/jobs/${id}`);
      if (!response.ok) return; // forgotten by the server (evicted)
      doc = await response.json();
    } catch (err) {
      continue; // the server may be busy; try again
    }
    render(doc);
    if (doc.state === "done") {
      show(doc);
      return;
    }
    if (doc.state === "failed") {
      showError(doc.error);
      return;
    }
  }
}

function show(doc) {
  shownId = doc.id;
  for (const { row } of jobs.values()) row.classList.toggle("shown", row.dataset.id === doc.id);
  const [w, h] = doc.output_size;
  const stage = $("stage");
  stage.dataset.width = w;
  stage.dataset.height = h;
  $("before").src = doc.before_url;
  $("after").src = doc.result_url;
  const link = $("download");
  link.href = `${doc.result_url}?download=1`;
  link.download = doc.download_name;
  const [iw, ih] = doc.input_size;
  $("caption").textContent = `${doc.name}: ${iw}×${ih} → ${w}×${h}` + (doc.notes.length ? ` (${doc.notes.join("; ")})` : "");
  $("viewer").hidden = false;
  layout();
  split(Number($("slider").value));
}

function layout() {
  const stage = $("stage");
  const w = Number(stage.dataset.width);
  const h = Number(stage.dataset.height);
  if (!w) return;
  if ($("fit").checked) {
    stage.style.width = "100%";
    stage.style.height = "auto";
    stage.style.aspectRatio = `${w} / ${h}`;
  } else {
    // Full resolution: one output pixel per device pixel.
    const dpr = window.devicePixelRatio || 1;
    stage.style.aspectRatio = "";
    stage.style.width = `${w / dpr}px`;
    stage.style.height = `${h / dpr}px`;
  }
}

function split(percent) {
  // Left of the divider: before; right: after.
  $("after").style.clipPath = `inset(0 0 0 ${percent}%)`;
  $("divider").style.left = `${percent}%`;
}

function dragOnStage(event) {
  if (event.buttons !== 1 && event.type !== "pointerdown") return;
  const rect = $("stage").getBoundingClientRect();
  const percent = Math.min(100, Math.max(0, ((event.clientX - rect.left) / rect.width) * 100));
  $("slider").value = percent;
  split(percent);
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    for (const file of event.target.files) upload(file);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    for (const file of event.dataTransfer.files) upload(file);
  });
  // A file dropped beside the drop zone must not make the browser navigate away to it.
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
  $("slider").addEventListener("input", (event) => split(Number(event.target.value)));
  $("fit").addEventListener("change", layout);
  $("stage").addEventListener("pointerdown", dragOnStage);
  $("stage").addEventListener("pointermove", dragOnStage);
  window.addEventListener("resize", layout);
  loadInfo().catch((err) => showError(`cannot reach the server (${err.message})`));
}

setup();
