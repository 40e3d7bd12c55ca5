// The report page: the front (plotly), the side-by-side pager, table sorting and run panels. Data: #report-data.
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text; select.appendChild(o);
}

// Quality vs compute: one precomputed plotly figure per metric and cost, swapped by the two selects.
function drawFront() {
  const key = $("metric").value + "|" + $("cost").value;
  const fig = DATA.figures[key];
  const div = $("front-plot");
  if (!fig) { Plotly.purge(div); div.textContent = "No run has both this metric and this cost."; return; }
  div.textContent = "";
  div.dataset.drawn = key;
  Plotly.react(div, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(() => {
    div.removeAllListeners && div.removeAllListeners("plotly_click");
    div.on("plotly_click", (ev) => { const p = ev.points[0]; if (p && p.customdata) openRun(p.customdata); });
  });
}

function setupFront() {
  DATA.metrics.forEach((m) => option($("metric"), m, DATA.names[m] || m));
  DATA.costs.forEach((c) => option($("cost"), c, DATA.names[c] || c));
  $("metric").onchange = drawFront; $("cost").onchange = drawFront;
  if (DATA.metrics.length) drawFront(); else $("front-plot").textContent = "No metric measured yet.";
}

// Side by side: the chosen runs as columns, one seed or prompt per row, images at native size, lazily loaded.
let page = 0;
function chosen() { return [...document.querySelectorAll("#run-choices input:checked")].map((i) => i.value); }
function keysOf(runs) {
  const keys = new Set();
  runs.forEach((r) => Object.keys(DATA.records[r].images).forEach((k) => keys.add(k)));
  return [...keys].sort((a, b) => a[0].localeCompare(b[0]) || Number(a.slice(1)) - Number(b.slice(1)));
}
function rowLabel(key, runs) {
  if (key[0] === "s") return "seed " + key.slice(1);
  const text = runs.map((r) => DATA.records[r].prompts[key]).find((t) => t);
  return "prompt " + key.slice(1) + (text ? ": " + text : "");
}
function colLabel(run) {
  return `<b>${esc(run)}</b><br>${esc(DATA.labels[run] || "")}`;
}
function drawCompare() {
  const runs = chosen(), grid = $("compare-grid"), per = Number($("per-page").value), zoom = Number($("zoom").value);
  if (runs.length < 2) { grid.textContent = "Choose at least two runs."; $("page-label").textContent = ""; return; }
  const keys = keysOf(runs), pages = Math.max(1, Math.ceil(keys.length / per));
  page = Math.min(Math.max(page, 0), pages - 1);
  $("page-label").textContent = `page ${page + 1} of ${pages} (${keys.length} ${keys[0] && keys[0][0] === "p" ? "prompts" : "seeds"})`;
  let rows = "";
  for (const key of keys.slice(page * per, page * per + per)) {
    rows += `<tr><th>${esc(rowLabel(key, runs))}</th>` + runs.map((r) => {
      const imgs = DATA.records[r].images[key] || [];
      if (!imgs.length) return '<td class="missing">—</td>';
      return `<td data-key="${esc(key)}" data-run="${esc(r)}">` + imgs.map((src) =>
        `<img loading="lazy" src="${esc(src)}" onload="this.width=this.naturalWidth*${zoom}" alt="${esc(r)} ${esc(key)}">`).join("") + "</td>";
    }).join("") + "</tr>";
  }
  grid.className = zoom > 1 ? "zoomed" : "";
  grid.innerHTML = `<table><thead><tr><th></th>${runs.map((r) => `<th>${colLabel(r)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>`;
}
function setupCompare() {
  const box = $("run-choices");
  DATA.runs.forEach((r, i) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" value="${esc(r)}"${i < 2 ? " checked" : ""}> ${esc(r)}`;
    box.appendChild(label);
  });
  box.onchange = (ev) => {
    if (chosen().length > 6) { ev.target.checked = false; return; }
    page = 0; drawCompare();
  };
  $("prev").onclick = () => { page--; drawCompare(); };
  $("next").onclick = () => { page++; drawCompare(); };
  $("per-page").onchange = () => { page = 0; drawCompare(); };
  $("zoom").onchange = drawCompare;
  drawCompare();
}

// Tables: click a header to sort by its data-v values (numbers numerically, missing last); run ids open panels.
function setupTables() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th").forEach((th, col) => {
      th.onclick = () => {
        const rows = [...table.tBodies[0].rows], up = th.dataset.dir !== "up";
        th.dataset.dir = up ? "up" : "down";
        const value = (r) => r.cells[col].dataset.v;
        rows.sort((a, b) => {
          const x = value(a), y = value(b);
          if (x === "" || y === "") return (x === "") - (y === "");
          const nx = Number(x), ny = Number(y);
          const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return up ? c : -c;
        });
        rows.forEach((r) => table.tBodies[0].appendChild(r));
      };
    });
    [...table.tBodies[0].rows].forEach((r) => {
      const cell = r.cells[0];
      if (cell && DATA.records[cell.textContent]) { cell.classList.add("run-link"); cell.onclick = () => openRun(cell.textContent); }
    });
  });
}

// A run's panel: missing files, cost (both FLOP conventions, memory), img/s per batch, metrics, config, manifest.
function openRun(run) {
  const r = DATA.records[run];
  if (!r) return;
  const cost = r.cost || {};
  const costRows = [["GFLOPs / image / step (attention excluded)", cost.gflops], ["GFLOPs (attention included)", cost.gflops_full],
    ["TFLOPs / image", cost.tflops_image], ["NFE", cost.nfe], ["img/s (median batch)", cost.img_per_s],
    ["peak memory (MB)", cost.peak_mem_mb], ["device", cost.device]];
  const pre = (obj) => obj ? `<pre>${esc(JSON.stringify(obj, null, 2))}</pre>` : '<p class="missing">missing</p>';
  $("panel-body").innerHTML = `<h2>${esc(run)}</h2>` +
    (r.missing.length ? `<p class="missing">Missing: ${r.missing.map(esc).join("; ")}</p>` : "") +
    "<h3>Cost</h3><table>" + costRows.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v === undefined || v === null ? "—" : esc(typeof v === "number" ? Number(v.toPrecision(4)) : v)}</td></tr>`).join("") + "</table>" +
    '<div id="panel-batches"></div><h3>Metrics</h3>' + pre(r.metrics) + "<h3>Resolved config</h3>" + pre(r.config) +
    "<h3>Manifest</h3>" + pre(r.manifest);
  $("panel").hidden = false;
  if (r.batch_figure) Plotly.newPlot("panel-batches", r.batch_figure.data, r.batch_figure.layout, {displaylogo: false});
}

$("panel-close").onclick = () => { $("panel").hidden = true; };
setupFront(); setupCompare(); setupTables();
