// The search app's page: browse frames, click a person or drop a picture, see ranked hits.
"use strict";
const $ = (id) => document.getElementById(id);
let gallery = null;

function fmtTime(t) {
  if (t === null || t === undefined) return "still";
  const m = Math.floor(t / 60), s = t - 60 * m;
  return `${m}:${s.toFixed(1).padStart(4, "0")}`;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

async function loadGallery() {
  gallery = await getJSON("/api/gallery");
  const index = gallery.index;
  const kind = index.factory ? `${index.kind} ${index.factory}` : index.kind;
  const idx = index.approximate ? ` <span class="approx">${kind}, approximate</span>` : ` ${kind} index`;
  const bytes = Object.values(gallery.bytes).reduce((a, b) => a + b, 0);
  $("summary").innerHTML = `${gallery.frames} frames, ${gallery.detections} people, ` +
    `${gallery.cameras.length} cameras,${idx}, ${(bytes / 1e6).toFixed(1)} MB on disk, model `;
  $("summary").append(gallery.model.name);     // a path: text, never markup
  const select = $("camera");
  select.innerHTML = "";
  for (const c of gallery.cameras) {
    const o = document.createElement("option");
    o.value = c.name;
    o.textContent = `${c.name} (${c.frames} frames)`;
    select.appendChild(o);
  }
  await loadFrames();
}

async function loadFrames() {
  const q = new URLSearchParams({camera: $("camera").value, limit: "500"});
  if ($("from").value !== "") q.set("start", $("from").value);
  if ($("to").value !== "") q.set("end", $("to").value);
  try {
    const data = await getJSON(`/api/frames?${q}`);
    $("frame-count").textContent = `${data.total} frames` + (data.total > data.frames.length ? `, first ${data.frames.length} shown` : "");
    const list = $("frames");
    list.innerHTML = "";
    for (const f of data.frames) {
      const li = document.createElement("li");
      li.className = "frame-thumb";
      li.dataset.frameId = f.id;
      li.innerHTML = `<img loading="lazy" src="/api/frames/${f.id}/image" alt="">` +
        `<span>${fmtTime(f.time)}<br><small>${f.name} #${f.frame} · ${f.people} people</small></span>`;
      li.onclick = () => showFrame(f.id);
      list.appendChild(li);
    }
  } catch (e) { status(e.message, true); }
}

async function showFrame(frameId, pickedDetection = null) {
  const f = await getJSON(`/api/frames/${frameId}`);
  for (const li of document.querySelectorAll("#frames li")) li.classList.toggle("current", li.dataset.frameId == frameId);
  $("frame-title").textContent = `${f.camera} · ${fmtTime(f.time)} · ${f.name} frame ${f.frame} — click a person to search`;
  const view = $("frame-view");
  for (const old of view.querySelectorAll(".person")) old.remove();
  const img = $("frame-image");
  img.dataset.frameId = frameId;
  img.src = `/api/frames/${frameId}/image`;
  // smaller boxes on top, so that a person standing in front of another stays clickable
  const area = (b) => (b[2] - b[0]) * (b[3] - b[1]);
  const byArea = [...f.detections].sort((a, b) => area(b.box) - area(a.box));
  byArea.forEach((d, k) => { d.layer = k + 1; });
  for (const d of f.detections) {
    const [x1, y1, x2, y2] = d.box;
    const box = document.createElement("div");
    box.className = "person" + (d.id === pickedDetection ? " picked" : "");
    box.dataset.detectionId = d.id;
    box.dataset.box = d.box.join(",");
    box.title = `person ${d.id} (score ${d.score.toFixed(2)}): click to search`;
    Object.assign(box.style, {left: `${100 * x1 / f.width}%`, top: `${100 * y1 / f.height}%`,
      width: `${100 * (x2 - x1) / f.width}%`, height: `${100 * (y2 - y1) / f.height}%`,
      zIndex: d.layer});
    box.onclick = () => {
      for (const other of view.querySelectorAll(".person")) other.classList.remove("picked");
      box.classList.add("picked");
      searchHit(d.id);
    };
    view.appendChild(box);
  }
}

async function searchHit(id) { await searchHits([id]); }

async function searchHits(ids) {
  // several ids: one query, their mean ("these are the same person")
  status(`searching for person ${ids.join(" and ")}…`);
  const q = new URLSearchParams({top: "50"});
  for (const id of ids) q.append("hit", id);
  try {
    showResults(await getJSON(`/api/search?${q}`));
  } catch (e) { status(e.message, true); }
}

// the detections picked (ticked cards) for "search again from these"
const picked = new Set();

function pickBox(id) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "pick";
  box.title = "pick for 'search again from these'";
  box.checked = picked.has(id);
  box.onclick = (e) => e.stopPropagation();
  box.onchange = () => {
    if (box.checked) picked.add(id); else picked.delete(id);
    updatePicked();
  };
  return box;
}

function updatePicked() {
  const button = $("search-picked");
  button.disabled = picked.size === 0;
  button.textContent = `search again from these (${picked.size})`;
}

function queryText(q) {
  if (q.kind === "multi") return `${q.parts.length} pictures of one person: ` + q.parts.map(queryText).join("; ");
  if (q.kind === "hit") return `person ${q.hit}: ${q.camera} · ${fmtTime(q.time)}`;
  return `your picture${q.kind === "image" ? ", box " + q.box.map(Math.round).join(",") : ""}`;
}

function addLine(list, rows) {
  // the same-person line before the first result that is not likely them (none uncalibrated)
  if (!rows.length || rows[0].likely === null) return;
  let cut = rows.findIndex((r) => !r.likely);
  if (cut < 0) cut = rows.length;
  const li = document.createElement("li");
  li.className = "threshold";
  li.dataset.afterRank = cut;
  li.textContent = "▲ likely the same person · not likely ▼";
  list.insertBefore(li, list.children[cut] || null);
}

function pText(r) {
  return r.same_person === null ? "" : `<br><span class="p">P same ${r.same_person.toFixed(2)}</span>`;
}

async function searchPicture(file) {
  status(`searching for the person in ${file.name}…`);
  const form = new FormData();
  form.append("picture", file);
  form.append("box", $("upload-box").value);
  form.append("top", "50");
  try {
    showResults(await getJSON("/api/search", {method: "POST", body: form}));
  } catch (e) { status(e.message, true); }
}

function showResults(r) {
  const approx = r.index.approximate ? " (approximate index)" : "";
  status(`${r.hits.length} matches${approx}`);
  const crop = $("query-crop");
  crop.src = r.query.crop;
  crop.style.display = "block";
  $("query-text").textContent = queryText(r.query);
  $("calibration").textContent = r.same_person.note;
  picked.clear();
  updatePicked();
  drawTimeline(r.timeline);
  showAppearances(r.appearances || []);
  const list = $("hits");
  list.innerHTML = "";
  for (const h of r.hits) {
    const li = document.createElement("li");
    li.className = "hit";
    Object.assign(li.dataset, {rank: h.rank, id: h.id, frameId: h.frame_id, source: h.source,
      frame: h.frame, box: h.box.join(","), similarity: h.similarity, camera: h.camera});
    li.innerHTML = `<img src="${h.crop}" alt="match ${h.rank}"><br>` +
      `<span class="sim">${h.similarity.toFixed(3)}</span> #${h.rank}<br>${h.camera} · ${fmtTime(h.time)}${pText(h)}`;
    li.title = "open this frame (click a person there to search again)";
    li.onclick = () => showFrame(h.frame_id, h.id);
    li.prepend(pickBox(h.id));
    list.appendChild(li);
  }
  addLine(list, r.hits);
}

function showAppearances(rows) {
  const list = $("appearances");
  list.innerHTML = "";
  $("track").innerHTML = "";
  for (const a of rows) {
    const li = document.createElement("li");
    li.className = "hit appearance";
    Object.assign(li.dataset, {rank: a.rank, hit: a.best.hit, camera: a.camera});
    li.innerHTML = `<img src="/api/detections/${a.best.hit}/crop" alt="appearance ${a.rank}"><br>` +
      `<span class="sim">${a.similarity.toFixed(3)}</span> #${a.rank}<br>${a.camera} · ` +
      `${fmtTime(a.start)}–${fmtTime(a.end)}<br>${a.frames} frame${a.frames === 1 ? "" : "s"}${pText(a)}`;
    li.title = "show this appearance's frames";
    li.onclick = () => showTrack(a);
    li.prepend(pickBox(a.best.hit));
    list.appendChild(li);
  }
  addLine(list, rows);
}

function showTrack(a) {
  // a strip of the appearance's frames (at most 12, evenly spread) and "search again from it"
  const step = Math.max(1, Math.ceil(a.members.length / 12));
  const picks = a.members.filter((_, k) => k % step === 0);
  const box = $("track");
  box.innerHTML = `<div>appearance #${a.rank}: ${a.camera}, ${fmtTime(a.start)}–${fmtTime(a.end)}, ` +
    `${a.frames} frames</div><div class="strip">` +
    picks.map((id) => `<img class="strip-frame" data-id="${id}" src="/api/detections/${id}/crop" alt="detection ${id}">`).join("") +
    `</div><button id="search-track">search again from this appearance</button>`;
  $("search-track").onclick = () => searchHit(a.best.hit);
}

function drawTimeline(rows) {
  const box = $("timeline");
  box.innerHTML = "<h2>When each camera saw them</h2>";
  for (const row of rows) {
    const span = Math.max(row.end - row.start, 1e-9);
    // the best hits drawn last (on top), strongest in colour
    const marks = [...row.marks].sort((a, b) => b.rank - a.rank).map((m) => {
      const x = 2 + 96 * (m.at - row.start) / span;
      const hue = Math.round(120 * m.strength);
      const at = row.axis === "seconds" ? fmtTime(m.at) : `#${m.at}`;
      return `<circle class="mark" data-rank="${m.rank}" data-id="${m.id}" cx="${x}%" cy="13" r="${m.rank === 1 ? 7 : 5}" ` +
        `fill="hsl(${hue},70%,42%)" fill-opacity="${(0.35 + 0.65 * m.strength).toFixed(2)}">` +
        `<title>#${m.rank} similarity ${m.similarity.toFixed(3)} at ${at}</title></circle>`;
    }).join("");
    const bars = (row.appearances || []).map((m) => {
      const x = 2 + 96 * (m.start - row.start) / span;
      const w = Math.max(96 * (m.end - m.start) / span, 0.6);
      const hue = Math.round(120 * m.strength);
      return `<rect class="interval" data-rank="${m.rank}" x="${x}%" y="4" width="${w}%" height="18" rx="3" ` +
        `fill="hsl(${hue},70%,42%)" fill-opacity="${(0.25 + 0.75 * m.strength).toFixed(2)}">` +
        `<title>appearance #${m.rank} similarity ${m.similarity.toFixed(3)}</title></rect>`;
    }).join("");
    let query = "";
    if (row.query !== null) {
      const qx = 2 + 96 * (row.query - row.start) / span;
      query = `<line class="query-mark" x1="${qx}%" x2="${qx}%" y1="2" y2="24" stroke="#ffb000" stroke-width="4"><title>the query</title></line>`;
    }
    const div = document.createElement("div");
    div.className = "camera";
    div.innerHTML = `<span>${row.camera}</span><svg data-camera="${row.camera}">` +
      `<line x1="2%" y1="13" x2="98%" y2="13" stroke="#bbb" stroke-width="4"/>${query}${row.appearances ? bars : marks}</svg>`;
    box.appendChild(div);
  }
}

function setupDrop() {
  const drop = $("drop");
  $("upload").onchange = (e) => { if (e.target.files.length) searchPicture(e.target.files[0]); };
  for (const ev of ["dragenter", "dragover"]) document.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) document.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) searchPicture(e.dataTransfer.files[0]); });
}

$("camera").onchange = loadFrames;
$("search-picked").onclick = () => searchHits([...picked]);
$("apply").onclick = loadFrames;
setupDrop();
loadGallery().catch((e) => status(e.message, true));
