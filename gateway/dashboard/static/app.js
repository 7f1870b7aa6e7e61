// The fleet dashboard's page: follows /events (server-sent events) and draws every gateway.
// Plain JavaScript, no library, no build step. Every text from the broker goes in with
// textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const S = {
  devices: new Map(), // device id -> summary (see gateway/dashboard/model.py Device.summary)
  series: new Map(), // device id -> Map("sensor/quantity" -> {u, t: [], v: [], f: []})
  step: 10,
  window: 3600,
  points: 360,
  prefix: "",
  broker: null,
  offset: 0, // server clock minus this browser's, seconds
  dirty: new Set(),
  all: true, // everything needs drawing
  cards: new Map(), // device id -> card element
  intake: null, // what the dashboard refused or set aside (model.py Fleet.intake)
};

const now = () => Date.now() / 1000 + S.offset;

// The server checks every field, but a page that throws shows nothing at all: whatever a value
// is, these give the type the drawing needs, or nothing.
const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
const list = (x) => (Array.isArray(x) ? x : []);
const str = (x) => (typeof x === "string" ? x : null);
const obj = (x) => (x && typeof x === "object" && !Array.isArray(x) ? x : {});

// --- tiny DOM helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// --- formatting ---------------------------------------------------------------------------------

function fmtValue(v, digits) {
  v = num(v);
  if (v === null) return "—";
  if (digits !== undefined) return v.toFixed(digits);
  const a = Math.abs(v);
  if (a >= 10000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  return v.toFixed(2);
}

// The wire speaks SenML units (Cel, %RH, Pa, ug/m3); people read °C, %, hPa, µg/m³. Values
// are scaled for display only (pascals to hectopascals); the model and the API keep the wire's.
const UNITS = {
  Cel: { u: "°C", digits: 1 },
  K: { u: "K", digits: 1 },
  "%RH": { u: "%", digits: 1 },
  "%EL": { u: "%", digits: 1 },
  "%": { u: "%", digits: 1 },
  Pa: { u: "hPa", scale: 0.01, digits: 1 },
  hPa: { u: "hPa", digits: 1 },
  "ug/m3": { u: "µg/m³", digits: 1 },
  ppm: { u: "ppm", digits: 0 },
  count: { u: "", digits: 0 },
  "count/dL": { u: "per dL", digits: 0 },
  "/": { u: "" },
  1: { u: "" },
  m3: { u: "m³" },
  "m/s2": { u: "m/s²" },
  "W/m2": { u: "W/m²" },
};

function unitOf(u) {
  return UNITS[u] || { u: u || "" };
}

// One value as a person reads it: {text: "1013.3", unit: "hPa"}.
function shown(v, u) {
  if (num(v) === null) return { text: "—", unit: "" }; // a failed read
  const d = unitOf(str(u) || "");
  return { text: fmtValue(v * (d.scale || 1), d.digits), unit: d.u };
}

function shownText(v, u) {
  const s = shown(v, u);
  return s.unit ? `${s.text} ${s.unit}` : s.text;
}

// The hour's range of a series, in the reader's unit ("—" when it has no value).
function rangeText(s) {
  const finite = s ? s.v.filter((v) => num(v) !== null) : [];
  if (!finite.length) return "—";
  const lo = shown(Math.min(...finite), s.u);
  const hi = shown(Math.max(...finite), s.u);
  return `${lo.text} … ${hi.text}${hi.unit ? " " + hi.unit : ""}`;
}

// "climate/pm2_5" -> the quantity as people write it, and the sensor it comes from.
const QUANTITIES = {
  temperature: "Temperature",
  humidity: "Humidity",
  pressure: "Pressure",
  pm1: "PM1",
  pm2_5: "PM2.5",
  pm10: "PM10",
  co2: "CO₂",
};

function keyNode(key) {
  key = String(key);
  const cut = key.indexOf("/");
  const sensor = cut < 0 ? "" : key.slice(0, cut);
  const q = cut < 0 ? key : key.slice(cut + 1);
  return [el("span", { class: "quantity" }, QUANTITIES[q] || q), " ", el("span", { class: "sensor" }, sensor)];
}

function ago(t) {
  t = num(t);
  if (t === null) return "never";
  const s = Math.max(0, now() - t);
  if (s < 2) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function duration(s) {
  s = num(s);
  if (s === null) return "—";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function isoTime(t) {
  t = num(t);
  const date = t === null ? null : new Date(t * 1000);
  if (!date || Number.isNaN(date.getTime())) return "—"; // out of any calendar's range
  return date.toISOString().replace(".000Z", "Z");
}

function shortId(id) {
  id = String(id);
  return id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id;
}

function displayName(d) {
  return str(d.name) || shortId(d.id);
}

// --- the model on this side -----------------------------------------------------------------------

function bucket(t) {
  return Math.floor(t / S.step);
}

// Same rule as the server's Series.add: one point per bucket, replaced by the server's newer one.
function mergePoints(s, points) {
  for (const [t, v, f] of points) {
    const b = bucket(t);
    let i = s.t.length;
    while (i > 0 && bucket(s.t[i - 1]) > b) i--;
    if (i > 0 && bucket(s.t[i - 1]) === b) {
      s.t[i - 1] = t;
      s.v[i - 1] = v;
      s.f[i - 1] = f;
    } else {
      s.t.splice(i, 0, t);
      s.v.splice(i, 0, v);
      s.f.splice(i, 0, f);
    }
  }
  const horizon = now() - S.window;
  let n = 0;
  while (n < s.t.length && s.t[n] < horizon) n++;
  n = Math.max(n, s.t.length - S.points);
  if (n > 0) {
    s.t.splice(0, n);
    s.v.splice(0, n);
    s.f.splice(0, n);
  }
}

function seriesOf(id) {
  let m = S.series.get(id);
  if (!m) S.series.set(id, (m = new Map()));
  return m;
}

function takeSeries(id, changed) {
  const m = seriesOf(id);
  for (const [key, doc] of Object.entries(changed || {})) {
    let s = m.get(key);
    if (!s) m.set(key, (s = { u: doc.u, t: [], v: [], f: [] }));
    mergePoints(s, doc.points);
  }
}

function onSnapshot(doc) {
  S.step = doc.step;
  S.window = doc.window;
  S.points = doc.points;
  S.prefix = doc.prefix;
  S.offset = doc.t - Date.now() / 1000;
  S.broker = doc.broker;
  S.intake = doc.intake;
  S.devices.clear();
  S.series.clear();
  for (const d of list(doc.devices)) {
    const series = d.series;
    delete d.series;
    S.devices.set(d.id, d);
    takeSeries(d.id, series);
  }
  S.all = true;
  schedule();
}

function onUpdate(doc) {
  // every gateway's presence depends on the broker connection
  if (!S.broker || S.broker.connected !== doc.broker.connected) S.all = true;
  S.broker = doc.broker;
  S.intake = doc.intake;
  for (const d of list(doc.devices)) {
    S.devices.set(d.id, d);
    S.dirty.add(d.id);
  }
  // made room for a newly signed gateway (the one whose last signed message was the oldest)
  for (const id of list(doc.gone)) {
    S.devices.delete(id);
    S.series.delete(id);
    S.all = true;
  }
  for (const [id, changed] of Object.entries(obj(doc.points))) {
    if (!S.devices.has(id)) continue;
    takeSeries(id, changed);
    S.dirty.add(id);
  }
  schedule();
}

// --- sparklines -----------------------------------------------------------------------------------

function sparkline(s, width, height, cls) {
  const box = svg("svg", {
    class: cls || "spark",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    preserveAspectRatio: "none",
    role: "img",
  });
  const finite = s ? s.v.filter((v) => num(v) !== null) : [];
  if (!s || finite.length === 0) return box;
  // the last hour, or since the first point when there is less (at least a minute)
  const t1 = now();
  const t0 = Math.max(t1 - S.window, Math.min(s.t[0], t1 - 60));
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const pad = 2;
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - lo) / (hi - lo)) * (height - 2 * pad);
  let run = [];
  const lines = [];
  for (let i = 0; i < s.t.length; i++) {
    if (s.v[i] === null || s.t[i] < t0) {
      if (run.length) lines.push(run);
      run = [];
      continue;
    }
    run.push(`${x(s.t[i]).toFixed(1)},${y(s.v[i]).toFixed(1)}`);
  }
  if (run.length) lines.push(run);
  for (const r of lines) {
    if (r.length === 1) {
      const [px, py] = r[0].split(",");
      box.append(svg("circle", { cx: px, cy: py, r: 1.2, class: "pt" }));
    } else {
      box.append(svg("polyline", { points: r.join(" "), class: "line" }));
    }
  }
  for (let i = 0; i < s.t.length; i++) {
    if (!s.f[i] || s.t[i] < t0) continue;
    const cy = s.v[i] === null ? height - pad : y(s.v[i]);
    box.append(svg("circle", { cx: x(s.t[i]).toFixed(1), cy: cy.toFixed(1), r: 2.2, class: "flag-dot" }));
  }
  const title = svg("title", {});
  title.textContent = `last hour: ${rangeText(s)}`;
  box.append(title);
  return box;
}

// --- pieces of a device -------------------------------------------------------------------------

const SILENT_MIN = 10; // seconds: never call a gateway silent sooner than this
const HEALTH_DEFAULT = 60; // [monitor] health_interval's default, until the gateway's is known

// What the page says of a gateway: online, offline (its Last Will, or its goodbye), silent (its
// status says online but it has not been heard for several health intervals: a Will the broker
// never sent, or a hung gateway) or unknown (never said, or the dashboard lost the broker and
// cannot know), with the reason in a few words.
function presence(d) {
  const b = S.broker;
  if (b && !b.connected) return { state: "unknown", why: `the dashboard lost the broker ${ago(b.since)}` };
  if (d.status === "offline") {
    const since = d.status_t === null || d.status_t === undefined ? [] : [`for ${duration(now() - d.status_t)}`];
    const heard = d.seen === null || d.seen === undefined ? [] : [`last heard ${ago(d.seen)}`];
    return { state: "offline", why: [...since, ...heard].join("; ") || "its Last Will or goodbye" };
  }
  if (d.status !== "online") return { state: "unknown", why: "no status from this gateway" };
  const every = d.health_every || HEALTH_DEFAULT;
  const quiet = d.seen === null || d.seen === undefined ? null : now() - d.seen;
  if (quiet === null || quiet > Math.max(SILENT_MIN, 3 * every)) {
    const since = quiet === null ? "not heard from yet" : `nothing for ${duration(quiet)}`;
    return { state: "silent", why: `says online, but ${since}; it reports every ${duration(every)}` };
  }
  return { state: "online", why: `last heard ${ago(d.seen)}` };
}

function presenceText(d) {
  const p = presence(d);
  return `${p.state} (${p.why})`;
}

function statusPill(d) {
  const p = presence(d);
  return el("span", { class: `pill status ${p.state}`, title: p.why }, p.state);
}

function uplinkText(d) {
  const h = d.health;
  if (presence(d).state !== "online") return presenceText(d);
  if (!h) return "online";
  const proto = h.protocol ? ` · MQTT ${h.protocol}` : "";
  return (h.connected ? "connected" : "disconnected") + proto;
}

function queueText(d) {
  const h = d.health;
  if (!h || num(h.queue_depth) === null) return "—";
  const oldest = h.oldest_unsent_age_s;
  return `${h.queue_depth} unsent` + (oldest !== null && oldest !== undefined ? ` · oldest ${duration(oldest)}` : "");
}

// `sealed` is the gateway's own last sealed batch, from its latest health (up to one health
// interval old); `seen` the newest batch this dashboard received through the broker and
// verified. A batch seen was sealed, so a seen ahead of sealed only means the health is older.
function chainText(d) {
  const c = obj(d.chain);
  const sealed = num(c.sealed);
  const seen = num(c.seen);
  if (sealed === null && seen === null) return "—";
  if (seen === null) return `last batch #${sealed} sealed`;
  if (sealed === null || seen >= sealed) return `last batch #${seen} sealed and delivered`;
  return `last batch #${sealed} sealed · #${seen} delivered`;
}

const CHAIN_TITLE =
  "sealed: the gateway's own count, from its health message; delivered: the newest signed " +
  "batch this dashboard received through the broker and verified";

// "verified" only for a good signature by an attestor the dashboard was told to trust
// (--attestor); a good signature by any other key is "not trusted", anything else "unverified".
function trustText(a) {
  if (a.verified === true) return "verified";
  return a.signed === true ? "not trusted" : "unverified";
}

function trustNode(a) {
  const text = trustText(a);
  const cls = text === "verified" ? "verified" : "unverified";
  return el("span", { class: cls, title: str(a.problem) || "" }, text);
}

function attestationOf(d) {
  if (d.attestation && typeof d.attestation === "object") return { ...d.attestation, source: "signed" };
  const h = d.health && typeof d.health.attestation === "object" && d.health.attestation;
  // the gateway's own copy: its "verified" is a count of readings, its signature unseen here
  if (h) return { ...h, source: "health", verified_readings: h.verified, verified: null };
  return null;
}

// Green only for a score that earns: a 0 is bad whatever the chain says, and so is a chain
// that replayed or equivocated; in between, a warning.
function scoreTone(a) {
  if (a.verified === false) return "doubtful"; // shown, but not in a trusted one's colours
  if (a.score === null || a.score === undefined) return "warn";
  if (a.score === 0 || a.status === "replay" || a.status === "equivocation") return "bad";
  return a.score >= 0.8 ? "good" : "warn";
}

function attestationNode(d, long) {
  const a = attestationOf(d);
  if (!a) return el("span", { class: "muted" }, "none yet");
  const tone = scoreTone(a);
  const chainTone = a.verified === false ? "doubtful" : a.status === "ok" || a.status === "gap" ? "good" : "bad";
  const score = num(a.score) === null ? "—" : a.score.toFixed(3);
  const kids = [
    el("span", { class: `score ${tone}` }, score),
    " ",
    el("span", { class: `chain-status ${chainTone}`, title: "the chain's status in the epoch" }, `chain ${a.status || "?"}`),
  ];
  if (a.source === "signed") {
    kids.push(" ", trustNode(a));
  } else {
    kids.push(" ", el("span", { class: "muted" }, "(as the gateway reports it)"));
  }
  if (list(a.why).length) {
    // what costs, in words: a score of 0 says why ("clock not synced: 0 of 108 readings synced")
    kids.push(el("span", { class: "why" }, ...list(a.why).map((w) => el("span", {}, String(w)))));
  }
  return el("span", { class: "attestation" }, ...kids);
}

function flagNodes(flags) {
  // spaces between the badges, so they also read (and copy) as separate words
  return list(flags).map(String).flatMap((f, i) => (i ? [" ", el("span", { class: "flag" }, f)] : [el("span", { class: "flag" }, f)]));
}

function flagsNode(r) {
  if (!list(r.af).length) return null;
  return el("span", { class: "flags" }, ...flagNodes(r.af));
}

function readingRows(d, width, height, long) {
  const series = seriesOf(d.id);
  const latest = obj(d.latest);
  const keys = [...new Set([...Object.keys(latest), ...series.keys()])].sort();
  const rows = [];
  for (const key of keys) {
    const r = obj(latest[key] || { v: null, u: (series.get(key) || {}).u || "", af: [], t: null });
    const flagged = list(r.af).length > 0;
    const s = series.get(key);
    const value = shown(r.v, r.u);
    // The card has no room for a flags column: its flags go under the reading's name, where
    // they wrap inside the card.
    const cells = [
      el("th", { scope: "row", class: "key", title: key }, ...keyNode(key), long ? null : flagsNode(r)),
      el("td", { class: "value", "data-key": key }, value.text, value.unit ? el("span", { class: "unit" }, ` ${value.unit}`) : null),
      el("td", { class: "spark-cell" }, sparkline(s, width, height)),
    ];
    if (long) {
      cells.push(
        el("td", { class: "flags-cell" }, flagsNode(r)),
        el("td", { class: "range", "data-label": "hour" }, rangeText(s)),
        el("td", { class: "score-cell", "data-label": "score" }, num(r.as) === null ? "—" : r.as.toFixed(2)),
        el("td", { class: "when", "data-label": "read" }, ago(r.t)),
      );
    }
    rows.push(el("tr", { class: flagged ? "reading flagged" : "reading", "data-key": key }, ...cells));
  }
  return rows;
}

function anomalyList(d, limit) {
  const items = list(d.anomalies).slice(-limit).reverse().map(obj);
  if (!items.length) return null;
  return el(
    "ul",
    { class: "anomalies" },
    ...items.map((a) =>
      el(
        "li",
        { class: "flagged" },
        el("span", { class: "when" }, ago(a.t)),
        " ",
        el("span", { class: "key", title: a.key }, ...keyNode(a.key)),
        " ",
        `${shownText(a.v, a.u)} `,
        ...flagNodes(a.af),
      ),
    ),
  );
}

function anomalyPill(d) {
  const n = recentAnomalies(d);
  if (!n) return null;
  const more = n >= list(d.anomalies).length && list(d.anomalies).length >= 50 ? "+" : "";
  return el("span", { class: "pill anomaly-count", title: "flagged readings seen in the last hour" }, `${n}${more} ${n === 1 ? "anomaly" : "anomalies"} (1 h)`);
}

function fact(label, value, cls, title) {
  return [el("dt", {}, label), el("dd", { class: cls || null, title: title || null }, value)];
}

function recentAnomalies(d) {
  const since = now() - S.window;
  return list(d.anomalies).filter((a) => num(obj(a).t) !== null && a.t >= since).length;
}

function heardText(d) {
  return d.seen === null || d.seen === undefined ? "not heard from yet" : `last heard ${ago(d.seen)}`;
}

// One gateway's drawing; should anything in it still throw, that gateway alone says so and
// the rest of the page is drawn.
function drawn(draw, d) {
  try {
    return draw();
  } catch (e) {
    const id = String(d && d.id);
    return el(
      "article",
      { class: "card", "data-device": id },
      el("header", {}, el("span", { class: "name" }, shortId(id))),
      el("p", { class: "muted" }, `cannot show this gateway: ${e && e.message}`),
    );
  }
}

function card(d) {
  const status = presence(d).state;
  const flagged = list(d.flagged).length > 0;
  const classes = ["card", `status-${status}`];
  if (status === "offline") classes.push("offline");
  if (flagged) classes.push("has-flags");
  const recent = anomalyList(d, 3);
  return el(
    "article",
    { class: classes.join(" "), "data-device": d.id },
    el(
      "header",
      {},
      el("a", { href: `#/device/${d.id}`, class: "name" }, displayName(d)),
      statusPill(d),
      flagged ? el("span", { class: "pill flagged-count" }, `${list(d.flagged).length} flagged`) : null,
      anomalyPill(d),
    ),
    el("div", { class: "id muted", title: d.id }, shortId(d.id), " · ", heardText(d)),
    el(
      "dl",
      { class: "facts" },
      ...fact("uplink", uplinkText(d), "uplink"),
      ...fact("queue", queueText(d), "queue"),
      ...fact("chain", chainText(d), "chain", CHAIN_TITLE),
      ...fact("attestation", attestationNode(d, false)),
    ),
    el("table", { class: "readings" }, el("tbody", {}, ...readingRows(d, 120, 26, false))),
    recent ? el("div", { class: "recent" }, el("h3", {}, "recent anomalies"), recent) : null,
  );
}

// --- views --------------------------------------------------------------------------------------

function sortedDevices() {
  return [...S.devices.values()].sort(
    (a, b) => displayName(a).localeCompare(displayName(b)) || a.id.localeCompare(b.id),
  );
}

function renderOverview(view) {
  let grid = view.querySelector(":scope > .grid");
  if (!grid) {
    S.cards.clear();
    grid = el("section", { class: "grid" });
    view.replaceChildren(grid);
  }
  const devices = sortedDevices();
  if (!devices.length) {
    view.replaceChildren(el("p", { class: "empty" }, `No gateway seen yet under ${S.prefix}/… on the broker.`));
    S.cards.clear();
    return;
  }
  const wanted = [];
  for (const d of devices) {
    let c = S.cards.get(d.id);
    if (!c || S.all || S.dirty.has(d.id)) {
      const fresh = drawn(() => card(d), d);
      if (c) c.replaceWith(fresh);
      c = fresh;
      S.cards.set(d.id, c);
    }
    wanted.push(c);
  }
  for (const [id, c] of S.cards) {
    if (!S.devices.has(id)) {
      c.remove();
      S.cards.delete(id);
    }
  }
  wanted.forEach((c, i) => {
    if (grid.children[i] !== c) grid.insertBefore(c, grid.children[i] || null);
  });
}

function kvTable(rows) {
  return el(
    "table",
    { class: "kv" },
    el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v)))),
  );
}

function modulesTable(mods) {
  if (!mods || !mods.length) return el("p", { class: "muted" }, "none");
  return el(
    "table",
    { class: "list" },
    el("thead", {}, el("tr", {}, el("th", {}, "module"), el("th", {}, "version"), el("th", {}, "sha256"))),
    el(
      "tbody",
      {},
      ...mods.map((m) =>
        el(
          "tr",
          {},
          el("td", {}, m.id ? `${m.id} (${m.name})` : m.name || "?"),
          el("td", {}, m.version || "?"),
          el("td", { class: "hash", title: m.sha256 || "" }, (m.sha256 || "").slice(0, 16)),
        ),
      ),
    ),
  );
}

function renderDetail(view, id) {
  const d = S.devices.get(id);
  if (!d) {
    view.replaceChildren(
      el("p", {}, el("a", { href: "#/" }, "← fleet")),
      el("p", { class: "empty" }, `No gateway ${id} seen (yet).`),
    );
    return;
  }
  const status = presence(d).state;
  const h = obj(d.health);
  const b = d.birth && typeof d.birth === "object" ? d.birth : null;
  const chain = obj(d.chain);
  const a = attestationOf(d);
  const sections = [];
  sections.push(
    el(
      "section",
      { class: "panel" },
      el("h2", {}, "Readings"),
      el(
        "table",
        { class: "readings long" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ...["reading", "value", "last hour", "flags", "range (hour)", "score", "read"].map((t) => el("th", { scope: "col" }, t)),
          ),
        ),
        el("tbody", {}, ...readingRows(d, 360, 48, true)),
      ),
    ),
  );
  sections.push(
    el(
      "section",
      { class: "panel" },
      el("h2", {}, "Gateway"),
      kvTable([
        ["device id", el("code", {}, d.id)],
        ["status", presenceText(d)],
        ["uplink", uplinkText(d)],
        ["queue", queueText(d)],
        ["chain", el("span", { title: CHAIN_TITLE }, chainText(d))],
        ["batches seen", `${num(chain.batches) ?? 0} verified, ${num(chain.rejected) ?? 0} rejected` + (str(chain.problem) ? ` (last: ${chain.problem})` : "")],
        ["version", h.version || (b && b.version) || "—"],
        ["uptime", duration(h.uptime_s)],
        ["readings", h.readings === undefined ? "—" : `${h.readings} (${h.flagged} flagged, rate ${h.anomaly_rate})`],
        ["batches", h.batches_sealed === undefined ? "—" : `${h.batches_sealed} sealed, ${h.batches_acked} acknowledged`],
        ["clock", h.clock ? `${obj(h.clock).synced ? "synced" : "not synced"} (${str(obj(h.clock).source) || "?"})` : "—"],
        ["last error", h.last_error || "—"],
        // by the gateway's own time: a retained health arrives now, however old it is
        ["health", h.t ? `published ${ago(Math.min(h.t, now()))}` : d.health_t ? `received ${ago(d.health_t)}` : "none received"],
      ]),
      el("h3", {}, "Modules"),
      modulesTable(h.modules || (b && b.modules)),
    ),
  );
  sections.push(
    el(
      "section",
      { class: "panel" },
      el("h2", {}, "Attestation"),
      a
        ? kvTable([
            ["score", attestationNode(d, true)],
            ["epoch", `${isoTime(a.epoch_start)} – ${isoTime(a.epoch_end)}`],
            ["readings", a.expected == null ? "—" : `${a.verified_readings} verified of ${a.expected} expected, ${a.flagged} flagged`],
            ["attestor", a.attestor ? el("code", {}, a.attestor) : "—"],
            ["signature", a.source === "signed" ? trustText(a) + (a.problem ? `: ${a.problem}` : "") : "not seen (from the gateway's health)"],
          ])
        : el("p", { class: "muted" }, "No attestation seen yet."),
    ),
  );
  sections.push(
    el(
      "section",
      { class: "panel" },
      el("h2", {}, "Birth"),
      b
        ? kvTable([
            ["signature", b.verified ? "verified" : `unverified: ${b.problem}`],
            ["version", b.version || "—"],
            ["started", isoTime(b.started)],
            ["boot", el("code", {}, b.boot || "—")],
            ["config sha256", el("code", {}, b.config_sha256 || "—")],
            ["next seq", b.next_seq === null ? "—" : `#${b.next_seq}`],
            [
              "sensors",
              list(b.sensors)
                .map(obj)
                .map((s) => `${s.id} (${s.driver}: ${list(s.quantities).join(", ")} every ${s.interval} s)`)
                .join("; ") || "—",
            ],
          ])
        : el("p", { class: "muted" }, "No birth message seen."),
    ),
  );
  const anomalies = anomalyList(d, 50);
  sections.push(
    el(
      "section",
      { class: "panel" },
      el("h2", {}, "Recent anomalies"),
      anomalies || el("p", { class: "muted" }, "None in what this dashboard has seen."),
    ),
  );
  const classes = ["detail", `status-${status}`];
  if (status === "offline") classes.push("offline");
  if (list(d.flagged).length) classes.push("has-flags");
  view.replaceChildren(
    el(
      "article",
      { class: classes.join(" "), "data-device": d.id },
      el(
        "header",
        {},
        el("a", { href: "#/", class: "back" }, "← fleet"),
        el("h2", { class: "name" }, displayName(d)),
        statusPill(d),
        list(d.flagged).length ? el("span", { class: "pill flagged-count" }, `${list(d.flagged).length} flagged`) : null,
        anomalyPill(d),
      ),
      el("div", { class: "sections" }, ...sections),
    ),
  );
}

function renderHeader() {
  const b = S.broker;
  const broker = document.getElementById("broker");
  broker.textContent = !b ? "broker: ?" : b.connected ? "broker: connected" : "broker: disconnected";
  broker.className = `pill ${b && b.connected ? "good" : "bad"}`;
  broker.title = b && b.error ? b.error : "the dashboard's connection to the MQTT broker";
  const devices = [...S.devices.values()];
  const online = devices.filter((d) => presence(d).state === "online").length;
  const flagged = devices.filter((d) => list(d.flagged).length).length;
  const recent = devices.filter((d) => recentAnomalies(d) > 0).length;
  document.getElementById("counts").textContent =
    `${devices.length} gateway${devices.length === 1 ? "" : "s"} · ${online} online · ` +
    `${flagged} flagged now · ${recent} with anomalies in the last hour`;
  renderIntake();
}

// What the dashboard refused or set aside: anyone may publish on the broker, and an operator
// should see that someone does.
function renderIntake() {
  const box = document.getElementById("intake");
  if (!box) return;
  const i = obj(S.intake);
  const refused = Object.entries(obj(i.refused)).map(([why, n]) => `${n} ${why}`);
  const trusted = list(i.attestors);
  box.replaceChildren(
    el("span", {}, `Shown: gateways whose own key signed a birth or batch that verified. `),
    el("span", {}, trusted.length ? `Attestations trusted from ${trusted.map(String).join(", ")}. ` : "No attestor trusted (--attestor): attestations show as not trusted. "),
    el("span", { class: "refused" }, `Refused messages: ${refused.join(", ") || "none"}`),
    el("span", {}, ` · waiting for a signature: ${num(i.pending) ?? 0} · evicted: ${num(i.evicted) ?? 0}`),
  );
}

let timer = null;
function schedule() {
  if (timer === null) timer = setTimeout(render, 100);
}

function route() {
  const m = /^#\/device\/([1-9A-HJ-NP-Za-km-z]{1,64})$/.exec(location.hash);
  return m ? m[1] : null;
}

let lastRoute;
function render() {
  timer = null;
  const view = document.getElementById("view");
  const id = route();
  const full = S.all || id !== lastRoute;
  if (id) {
    if (full || S.dirty.has(id)) {
      try {
        renderDetail(view, id);
      } catch (e) {
        view.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← fleet")), drawn(() => { throw e; }, { id }));
      }
    }
  } else {
    renderOverview(view);
  }
  lastRoute = id;
  renderHeader();
  S.dirty.clear();
  S.all = false;
}

// --- wiring -------------------------------------------------------------------------------------

function connect() {
  const stream = document.getElementById("stream");
  const es = new EventSource("/events");
  es.addEventListener("open", () => {
    stream.textContent = "page: live";
    stream.className = "pill good";
  });
  es.addEventListener("error", () => {
    stream.textContent = "page: reconnecting…";
    stream.className = "pill bad";
  });
  es.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  es.addEventListener("update", (e) => onUpdate(JSON.parse(e.data)));
}

window.addEventListener("hashchange", () => {
  S.all = true;
  schedule();
  window.scrollTo(0, 0);
});
// times ("12 s ago") and sparkline windows move even when nothing arrives
setInterval(() => {
  S.all = true;
  schedule();
}, 5000);
connect();
