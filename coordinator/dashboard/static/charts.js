// Line charts in plain SVG: enough for equity, drawdown and training curves, with no library to ship.
(() => {
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

/** Whole-number ticks from lo to hi, at most about ``count`` of them (a step of 1, 2, 5, 10, ...). */
function integerTicks(lo, hi, count) {
  const first = Math.ceil(lo), last = Math.floor(hi);
  if (last < first) return [];
  const raw = Math.max(1, (last - first) / count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || Math.ceil(raw));
  const ticks = [];
  for (let t = Math.ceil(first / step) * step; t <= last; t += step) ticks.push(t);
  if (first === last || !ticks.length) ticks.push(first);
  return ticks;
}

function fmtNumber(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  return v.toFixed(a >= 10 ? 1 : 2);
}

function fmtTimeTick(ms, spanMs) {
  const d = new Date(ms);
  const iso = d.toISOString();
  return spanMs > 3 * 86400e3 ? iso.slice(0, 10) : iso.slice(5, 16).replace("T", " ");
}

/**
 * lineChart({x, series: [{name, values, color, dash}], xKind: "time"|"number", xInteger, height, yLabel,
 *            vlines: [{x, label}], kind, bars}) -> <svg>
 * bars: each value drawn as a bar centred on its x (a histogram), from zero, instead of a line.
 * xInteger: the x axis counts (epochs): its ticks are whole numbers.
 * x: numbers (ms for time); values: numbers or null (a gap).
 */
function lineChart(opts) {
  const width = 900, height = opts.height || 260;
  const m = { l: 58, r: 14, t: 12, b: 26 };
  const xs = opts.x;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "data-kind": opts.kind || "" });
  const all = opts.series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  if (!xs.length || !all.length) {
    const t = svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle" });
    t.textContent = "no data";
    svg.appendChild(t);
    return svg;
  }
  let ylo = Math.min(...all), yhi = Math.max(...all);
  if (opts.zeroTop) yhi = Math.max(yhi, 0);
  if (ylo === yhi) { ylo -= 1; yhi += 1; }
  const pad = (yhi - ylo) * 0.05; ylo -= pad; yhi += pad;
  // A series may bring its own times (curves of different runs overlaid): the axis spans them all.
  const ranges = [xs, ...opts.series.map((s) => s.x).filter((x) => x && x.length)];
  let xlo = Math.min(...ranges.map((r) => r[0]));
  const xmax = Math.max(...ranges.map((r) => r[r.length - 1]));
  let xhi = xmax === xlo ? xlo + 1 : xmax;
  // Bars are centred on their x: half a bar's room on either side keeps the first and last inside.
  if (opts.bars && xs.length > 1) { const half = Math.abs(xs[1] - xs[0]) / 2; xlo -= half; xhi += half; }
  const X = (v) => m.l + ((v - xlo) / (xhi - xlo)) * (width - m.l - m.r);
  const Y = (v) => m.t + (1 - (v - ylo) / (yhi - ylo)) * (height - m.t - m.b);

  for (const t of niceTicks(ylo, yhi, 5)) {
    svg.appendChild(svgEl("line", { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    const label = svgEl("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" });
    label.textContent = fmtNumber(t);
    svg.appendChild(label);
  }
  let xticks = opts.xKind === "time"
    ? niceTicks(xlo, xhi, 6) : niceTicks(xlo, xhi, Math.min(8, Math.max(1, xhi - xlo)));
  // Counts (epochs): whole numbers only, never a tick at 2.5.
  if (opts.xInteger) xticks = integerTicks(xlo, xhi, 8);
  for (const t of xticks) {
    if (t < xlo || t > xhi) continue;
    const label = svgEl("text", { x: X(t), y: height - 8, "text-anchor": "middle" });
    label.textContent = opts.xKind === "time" ? fmtTimeTick(t, xhi - xlo) : opts.xInteger ? String(t) : fmtNumber(t);
    label.setAttribute("class", "xtick");
    svg.appendChild(label);
  }
  svg.appendChild(svgEl("line", { x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: "axis" }));
  for (const v of opts.vlines || []) {
    if (!(v.x >= xlo && v.x <= xhi)) continue;
    svg.appendChild(svgEl("line", { x1: X(v.x), x2: X(v.x), y1: m.t, y2: height - m.b, stroke: "#9ca3af",
                                    "stroke-dasharray": "3 3", class: "vline" }));
    if (v.label) {
      // Written just right of its line, at the top: a fold's number where its out-of-sample part starts.
      const label = svgEl("text", { x: X(v.x) + 4, y: m.t + 10, class: "vlabel", "data-x": v.x });
      label.textContent = v.label;
      svg.appendChild(label);
    }
  }
  if (opts.bars) {
    const base = Y(Math.min(Math.max(0, ylo), yhi));
    opts.series.forEach((s, k) => {
      const sx = s.x || xs;
      // Side by side within each x's slot: a series a slice of it.
      const slot = sx.length > 1 ? Math.abs(X(sx[1]) - X(sx[0])) * 0.85 : 24;
      const w = Math.max(1, slot / opts.series.length);
      s.values.forEach((v, i) => {
        if (v === null || !Number.isFinite(v)) return;
        const left = X(sx[i]) - slot / 2 + k * w;
        svg.appendChild(svgEl("rect", { x: left.toFixed(1), y: Math.min(Y(v), base).toFixed(1), width: w.toFixed(1),
                                        height: Math.abs(base - Y(v)).toFixed(1), fill: s.color, "data-series": s.name }));
      });
    });
    return svg;
  }
  for (const s of opts.series) {
    let d = "", pen = false;
    const sx = s.x || xs;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${X(sx[i]).toFixed(1)},${Y(v).toFixed(1)}`;
      pen = true;
    });
    const path = svgEl("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.6, "data-series": s.name });
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    svg.appendChild(path);
  }
  return svg;
}

function legend(series) {
  const div = document.createElement("div");
  div.className = "legend";
  for (const s of series) {
    const span = document.createElement("span");
    const i = document.createElement("i");
    i.style.background = s.color;
    span.append(i, s.name);
    div.appendChild(span);
  }
  return div;
}

window.ktrdrCharts = { lineChart, legend };
})();
