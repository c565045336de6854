// Marquee dashboard: experiments list and per-experiment results, charts in plain SVG.
// No framework and no CDN: the api embeds this file, so the page works offline.
"use strict";

const COLORS = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#be123c", "#4d7c0f", "#a16207"];
const SVG_NS = "http://www.w3.org/2000/svg";

// The session is an HttpOnly cookie the server sets from a sign-in exchange:
// this script never holds the key after signing in, so an injected script
// could not read it, and the cookie is accepted for reads (GET) only.
async function signIn(key) {
  const response = await fetch("/dashboard/session", { method: "POST", headers: { "x-api-key": key } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
}

async function signOut() {
  await fetch("/dashboard/session", { method: "DELETE" }).catch(() => {});
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const pct = (x, digits = 2) => (x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + "%");
const num = (x) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));
const ci = (e) => (e && e.mean !== null ? `${pct(e.mean)} (${pct(e.ci_low)} – ${pct(e.ci_high)})` : "–");

function showLogin(message) {
  for (const id of ["list", "detail"]) document.getElementById(id).hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
}

// ---------------------------------------------------------------- charts

function frame(width, height) {
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" });
}

function legend(container, names) {
  const box = el("div", { class: "legend" });
  names.forEach((name, i) => {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, document.createTextNode(name));
    box.append(item);
  });
  container.append(box);
}

// The lift to read for one arm: pooled and relative while the weights held;
// once they moved, pooling mixes users assigned under different splits
// (Simpson's paradox), so the cohort lift (arms compared within each weight
// period's users, then combined) is shown instead, in absolute terms.
function headlineLift(c) {
  if (c.cohort) {
    const s = c.cohort.combined;
    return { mid: s.estimate, ci: s.ci, p: s.p_value, chance: s.chance_to_beat, format: (v) => `${v >= 0 ? "+" : ""}${(v * 100).toFixed(2)} pp` };
  }
  const p = c.pooled;
  return { mid: p.rel_lift, ci: p.rel_ci, p: p.p_value, chance: p.chance_to_beat, format: (v) => pct(v, 1) };
}

// The confidence sequence of the headline lift: valid however often the page
// is read; marked when it decides the comparison (the experiment's analysis).
function sequentialCell(c, lift) {
  if (!c || !c.sequential) return el("td", {}, "–");
  const s = c.sequential;
  const interval = c.cohort ? s.abs_ci : s.rel_ci;
  if (!interval) return el("td", {}, "–");
  const cell = el("td", { "data-sequential": c.arm }, `${lift.format(interval.low)} to ${lift.format(interval.high)}`);
  if (s.significant) cell.className = interval.low > 0 ? "good" : "bad";
  return cell;
}

// Minimum detectable effect now (relative) and the wait for a 5% lift.
function powerCell(c) {
  if (!c || !c.power || c.power.mde_rel === null || c.power.mde_rel === undefined) return el("td", {}, "–");
  const days = c.power.days_to_target;
  const wait = days === null || days === undefined ? "" : days === 0 ? " / now" : ` / ${days < 1 ? "<1" : Math.ceil(days)} d`;
  return el("td", { "data-power": c.arm }, `±${pct(c.power.mde_rel, 1)}${wait}`);
}

// Point estimate with a CI whisker per arm; green when the CI is above 0, red when below.
function liftChart(container, comparisons) {
  const rows = comparisons
    .map((c) => ({ arm: c.arm, ...headlineLift(c) }))
    .filter((r) => r.mid !== null && r.ci);
  const width = 420, rowHeight = 40, top = 16, left = 90, right = 56;
  const height = Math.max(180, top + Math.max(rows.length, 1) * rowHeight + 24);
  const chart = frame(width, height);
  chart.setAttribute("data-chart", "lift");
  if (!rows.length) {
    chart.append(svg("text", { x: 10, y: 30 }, "No comparison yet: needs traffic in control and a treatment arm."));
    container.append(chart);
    return;
  }
  const lo = Math.min(0, ...rows.map((r) => r.ci.low)), hi = Math.max(0, ...rows.map((r) => r.ci.high));
  const pad = (hi - lo) * 0.1 || 0.1;
  const x = (v) => left + ((v - (lo - pad)) / (hi - lo + 2 * pad)) * (width - left - right);
  chart.append(svg("line", { class: "axis", x1: x(0), x2: x(0), y1: top - 8, y2: height - 20 }));
  chart.append(svg("text", { x: x(0), y: height - 6, "text-anchor": "middle" }, "0"));
  rows.forEach((r, i) => {
    const y = top + i * rowHeight + rowHeight / 2;
    const color = r.ci.low > 0 ? "#15803d" : r.ci.high < 0 ? "#b91c1c" : "#6b7280";
    chart.append(svg("text", { x: left - 8, y: y + 4, "text-anchor": "end" }, r.arm));
    chart.append(svg("line", { x1: x(r.ci.low), x2: x(r.ci.high), y1: y, y2: y, stroke: color, "stroke-width": 3 }));
    chart.append(svg("circle", { cx: x(r.mid), cy: y, r: 5, fill: color }));
    chart.append(svg("text", { x: x(r.ci.high) + 6, y: y + 4 }, r.format(r.mid)));
  });
  container.append(chart);
}

// One line per series over time; `series` is [{name, points: [[Date, value]]}], steps for weights.
function lineChart(container, name, series, { step = false, yMax = null, format = (v) => pct(v, 1) } = {}) {
  const width = 420, height = 220, left = 48, right = 12, top = 12, bottom = 28;
  const chart = frame(width, height);
  chart.setAttribute("data-chart", name);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    chart.append(svg("text", { x: 10, y: 30 }, "No data yet."));
    container.append(chart);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0].getTime())), t1 = Math.max(...all.map((p) => p[0].getTime()));
  const vMax = yMax !== null ? yMax : Math.max(...all.map((p) => p[1])) * 1.15 || 1;
  const x = (t) => left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / vMax) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const v = (vMax * i) / 4;
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  chart.append(svg("text", { x: left, y: height - 8 }, new Date(t0).toISOString().slice(0, 10)));
  if (t1 !== t0) chart.append(svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, new Date(t1).toISOString().slice(0, 10)));
  series.forEach((s, i) => {
    const pts = s.points.map((p) => [x(p[0].getTime()), y(p[1])]);
    let d = "";
    pts.forEach(([px, py], j) => {
      if (j === 0) d += `M${px},${py}`;
      else d += step ? `H${px}V${py}` : `L${px},${py}`;
    });
    if (step && pts.length) d += `H${width - right}`;
    const color = COLORS[i % COLORS.length];
    chart.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    pts.forEach(([px, py]) => chart.append(svg("circle", { cx: px, cy: py, r: 2.5, fill: color })));
  });
  container.append(chart);
  legend(container, series.map((s) => s.name));
}

// ---------------------------------------------------------------- views

async function renderList() {
  const { experiments } = await api("/v1/dashboard/experiments");
  const body = document.querySelector("#experiments tbody");
  body.replaceChildren();
  for (const e of experiments) {
    const row = el("tr", { class: "clickable", "data-experiment": e.key });
    row.append(el("td", {}, e.key), el("td", {}, e.status), el("td", {}, e.policy), el("td", {}, e.metric));
    const headline = el("td", {}, e.srm_mismatch ? "⚠ sample-ratio mismatch: results not trustworthy" : e.headline || "–");
    if (e.srm_mismatch) headline.className = "bad";
    else if (e.headline_tone) headline.className = e.headline_tone;
    row.append(headline);
    row.addEventListener("click", () => {
      location.search = "?experiment=" + encodeURIComponent(e.key);
    });
    body.append(row);
  }
  document.getElementById("list").hidden = false;
}

async function renderDetail(experiment) {
  const results = await api(`/v1/experiments/${encodeURIComponent(experiment)}/results`);
  const report = results.report;
  document.getElementById("detail-title").textContent = `Experiment ${results.experiment.key}`;
  document.getElementById("detail-meta").textContent =
    `${results.experiment.status} · ${results.experiment.policy} · metric ${results.experiment.metric} · ` +
    `${report.analysis && report.analysis.method === "fixed_horizon" ? "fixed-horizon analysis" : "sequential analysis (valid at every look)"} · ${results.from} to ${results.to}`;

  const warning = document.getElementById("srm-warning");
  if (report.srm && report.srm.mismatch) {
    const failed = (report.periods || []).filter((p) => p.srm && p.srm.mismatch).map((p) => p.index + 1);
    warning.hidden = false;
    warning.textContent = `Sample-ratio mismatch: users per arm do not match the weights they were assigned under ` +
      `(overall p = ${report.srm.p_value.toExponential(2)}${failed.length ? `; failed in period ${failed.join(", ")}` : ""}). ` +
      "Assignment or logging is broken somewhere; do not trust these results until it is explained.";
  } else {
    warning.hidden = true;
  }

  const comparisons = Object.fromEntries(report.comparisons.map((c) => [c.arm, c]));
  const body = document.querySelector("#arms tbody");
  body.replaceChildren();
  for (const arm of report.arms) {
    const c = comparisons[arm.arm];
    const lift = c ? headlineLift(c) : null;
    const row = el("tr", { "data-arm": arm.arm });
    const liftCell = el("td", {}, lift && lift.mid !== null ? lift.format(lift.mid) : arm.is_control ? "control" : "–");
    if (lift && lift.ci) liftCell.className = lift.ci.low > 0 ? "good" : lift.ci.high < 0 ? "bad" : "";
    row.append(
      el("td", {}, arm.arm), el("td", {}, arm.algorithm), el("td", {}, pct(arm.weight, 1)), el("td", {}, num(arm.users)),
      el("td", {}, num(arm.impressions)), el("td", {}, num(arm.clicks)), el("td", {}, ci(arm.ctr)), el("td", {}, ci(arm.conversion)),
      liftCell, el("td", {}, lift && lift.p !== null && lift.p !== undefined ? lift.p.toFixed(4) : "–"),
      el("td", {}, lift && lift.chance !== null && lift.chance !== undefined ? pct(lift.chance, 1) : "–"),
      sequentialCell(c, lift), powerCell(c),
    );
    body.append(row);
  }

  const arms = report.arms.map((a) => a.arm);
  const liftBox = document.getElementById("chart-lift");
  liftChart(liftBox, report.comparisons);
  const ctrSeries = arms.map((arm) => ({
    name: arm,
    points: report.daily.filter((d) => d.arm === arm && d.ctr !== null).map((d) => [new Date(d.day + "T00:00:00Z"), d.ctr]),
  }));
  lineChart(document.getElementById("chart-ctr"), "ctr", ctrSeries);
  const weightSeries = arms.map((arm) => ({
    name: arm,
    points: results.weight_history.filter((w) => w.arm === arm).map((w) => [new Date(w.computed_at), w.weight]),
  }));
  // Without history the configured weights are the whole story: draw them as one point.
  weightSeries.forEach((s, i) => {
    if (!s.points.length) s.points.push([new Date(), report.arms[i].weight]);
  });
  lineChart(document.getElementById("chart-weights"), "weights", weightSeries, { step: true, yMax: 1, format: (v) => pct(v, 0) });
  renderPeriods(report);
  const window = report.outcome_window_days ? `the first ${report.outcome_window_days} days after each user's first exposure` : "each user's whole exposure";
  const method = document.getElementById("method");
  method.setAttribute("data-method", report.method);
  method.textContent =
    report.method === "pooled" ? "Method: pooled. The weights did not change, so all users are compared at once."
      : `Method: cohort analysis. The weights changed ${report.periods.length - 1} time(s): each user belongs to the period of their first exposure, ` +
        `arms are compared within each period's users (outcomes over ${window}) and the periods are combined by inverse variance. ` +
        "Lifts are absolute (percentage points); see docs/statistics.md.";
  document.getElementById("detail").hidden = false;
  document.body.setAttribute("data-ready", "detail");
}

// One row per weight period: when it began, the split, the users it brought and its own SRM test.
function renderPeriods(report) {
  const section = document.getElementById("periods");
  const periods = report.periods || [];
  section.hidden = periods.length < 2;
  const head = section.querySelector("thead tr");
  const arms = report.arms.map((a) => a.arm);
  head.replaceChildren(el("th", {}, "Period"), el("th", {}, "From"), el("th", {}, "Reason"),
    ...arms.map((a) => el("th", {}, `${a}: weight / users`)), el("th", {}, "SRM p-value"));
  const body = section.querySelector("tbody");
  body.replaceChildren();
  for (const p of periods) {
    const row = el("tr", { "data-period": p.index });
    row.append(el("td", {}, String(p.index + 1)), el("td", {}, p.start.replace("T", " ").slice(0, 19)), el("td", {}, p.reason),
      ...arms.map((_, i) => el("td", {}, `${pct(p.weights[i], 0)} / ${num(p.users[i])}`)));
    const srm = el("td", {}, p.srm ? p.srm.p_value.toExponential(2) : "–");
    if (p.srm && p.srm.mismatch) srm.className = "bad";
    row.append(srm);
    body.append(row);
  }
}

async function main() {
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await signIn(document.getElementById("key").value.trim());
      location.reload();
    } catch (error) {
      showLogin("That key was refused: " + error.message);
    }
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await signOut();
    location.href = "/dashboard";
  });
  // A key in the fragment (never sent to the server by the browser) signs in
  // once, then leaves the URL.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("key")) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      await signIn(hash.get("key"));
    } catch (error) {
      return showLogin("That key was refused: " + error.message);
    }
  }
  const experiment = new URLSearchParams(location.search).get("experiment");
  try {
    await renderList();
    document.getElementById("logout").hidden = false;
    if (experiment) await renderDetail(experiment);
    else document.body.setAttribute("data-ready", "list");
  } catch (error) {
    if (error.status === 401) return showLogin();
    if (error.status === 403) return showLogin("That key was refused: " + error.message);
    const message = el("p", { class: "error" }, "Could not load: " + error.message);
    document.querySelector("main").prepend(message);
    document.body.setAttribute("data-ready", "error");
  }
}

main();
