// isostream's live charts (dashboards/livechart.py): the rows of a streamed Bokeh ColumnDataSource drawn on
// one canvas, at most once per animation frame, with a grid, axes with units, and a legend. Lines over time
// (the axis in UTC), or bars over a number (the score histogram, with its threshold marked).
//
// Why not a Bokeh figure: measured in headless Chromium on 2 cores, a Bokeh figure streaming 10 rows/s cost
// a tab 28 % of a core for two charts (each paint re-measures every axis label to decide whether the layout
// moved); drawn by this file in a bare Panel page they cost 11 %, and on plain canvases, Chromium's floor, 8.5 %.
// The histogram changes once a second, but as a Bokeh figure it cost a new tab 60-75 ms of BokehJS work.

const GRID = "#e5e5e5";
const AXIS = "#444";
const FONT = "11px sans-serif";
const TITLE_FONT = "bold 13px sans-serif";
const LABEL_FONT = "italic 11px sans-serif";
const EMPTY_FONT = "italic 12px sans-serif";
const PAD = {left: 62, right: 12, top: 26, bottom: 36};
// x tick steps in ms: from 1 s to a day, the smallest that keeps labels ~90 px apart is taken
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]
  .map((s) => s * 1000);

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
}

// one formatter per number of decimals: toLocaleString builds a new one per call (profiled: 0.5 % of a tab)
const FORMATS = new Map();

// as many decimals as the step has (a step of 2.5 labels 2.5, 5.0, 7.5; of 0.02, 0.02, 0.04)
function decimals(step) {
  let d = 0;
  while (d < 6 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6 * 10 ** d) d++;
  return d;
}

function yLabel(v, step) {
  const digits = decimals(step);
  if (!FORMATS.has(digits)) {
    FORMATS.set(digits, new Intl.NumberFormat("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits}));
  }
  return FORMATS.get(digits).format(v);
}

function xLabel(ms, step) {
  const iso = new Date(ms).toISOString();  // UTC, as the axis says
  return step >= 86400000 ? iso.slice(5, 10) : step >= 60000 ? iso.slice(11, 16) : iso.slice(11, 19);
}

function finite(col, n) {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = Number(col[i]);
    if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  return [lo, hi];
}

// Adds the line through the n points (t[i], col[i]) to ctx's path, at most four points per pixel column: the
// first, the lowest, the highest and the last (M4: the picture is the same), so a frame costs what the
// chart's width costs, not what the ring's length does. Measured in headless Chromium, one line in a 310 px
// plot: 1,200 rows (history_s 120 at 100 ms ticks) 2.3-2.7 ms drawn whole, 2.0 ms decimated; 3,000 rows
// (300 s) 5.0-8.1 ms whole, 2.2 ms decimated; on every frame of every tab. A missing value breaks the line.
export function trace(ctx, t, col, n, X, Y) {
  let pen = false, column = NaN, count = 0;
  let fx = 0, fy = 0, lx = 0, ly = 0, lox = 0, loy = 0, hix = 0, hiy = 0, ilo = 0, ihi = 0;
  const to = (x, y) => {
    if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); pen = true; }
  };
  const flush = () => {
    if (count === 0) return;
    to(fx, fy);
    if (count > 2) {  // the extremes in the order they came
      if (ilo < ihi) { to(lox, loy); to(hix, hiy); } else { to(hix, hiy); to(lox, loy); }
    }
    if (count > 1) to(lx, ly);
    count = 0;
  };
  for (let i = 0; i < n; i++) {
    const tv = Number(t[i]), v = Number(col[i]);
    if (!Number.isFinite(tv) || !Number.isFinite(v)) { flush(); pen = false; continue; }
    const x = X(tv), y = Y(v), c = Math.floor(x);
    if (count === 0 || c !== column) {
      flush();
      column = c;
      fx = lx = lox = hix = x; fy = ly = loy = hiy = y; ilo = ihi = i;
      count = 1;
      continue;
    }
    if (y < loy) { lox = x; loy = y; ilo = i; }
    if (y > hiy) { hix = x; hiy = y; ihi = i; }
    lx = x; ly = y;
    count++;
  }
  flush();
}

// the bars (left[i], right[i], height col[i]) from the x axis up, a 1 px gap between neighbours
function bars(ctx, left, right, col, n, X, Y) {
  const base = Y(0);
  for (let i = 0; i < n; i++) {
    const l = Number(left[i]), r = Number(right[i]), v = Number(col[i]);
    if (!Number.isFinite(l) || !Number.isFinite(r) || !Number.isFinite(v) || v <= 0) continue;
    const a = X(l), b = X(r), top = Y(v);
    ctx.fillRect(a + 0.5, top, Math.max(1, b - a - 1), base - top);
  }
}

// draws the chart; false when there was nothing to draw on (no size yet)
export function paint(canvas, ctx, model, src) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (w <= 0 || h <= 0) return false;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = TITLE_FONT;
  ctx.fillStyle = AXIS;
  ctx.textAlign = "left";  // the context keeps the last paint's settings: its tick labels left it centred
  ctx.textBaseline = "top";
  ctx.fillText(model.heading, PAD.left, 6);

  const isBars = model.kind === "bars";
  const n = src.get_length() || 0;
  const t = src.data[model.x] || [];
  const tEnd = isBars ? src.data[model.x_to] || [] : t;  // bars: each row spans x .. x_to
  const series = (model.series || []).filter((s) => src.data[s.column] !== undefined);
  let [t0, t1] = finite(t, n);
  if (isBars) t1 = Math.max(t1, finite(tEnd, n)[1]);
  if (model.x_start != null) t0 = model.x_start;
  if (model.x_end != null) t1 = model.x_end;
  let lo = 0, hi = -Infinity;
  for (const s of series) {
    const [a, b] = finite(src.data[s.column], n);
    if (b > hi) hi = b;
    if (a < lo) lo = a;
  }
  const x0 = PAD.left, x1 = w - PAD.right, y0 = h - PAD.bottom, y1 = PAD.top;
  if (!(t1 > t0) || !Number.isFinite(hi) || (isBars && hi <= 0)) {
    ctx.font = EMPTY_FONT;
    ctx.fillStyle = "#777";
    ctx.textBaseline = "middle";
    ctx.fillText(model.empty_text, x0 + 8, (y0 + y1) / 2);
    return true;
  }
  if (hi <= lo) hi = lo + 1;
  const ystep = niceStep(hi - lo, Math.max(2, Math.floor((y0 - y1) / 40)));
  hi = Math.ceil((hi * 1.05) / ystep) * ystep;
  const X = (v) => x0 + ((v - t0) / (t1 - t0)) * (x1 - x0);
  const Y = (v) => y0 - ((v - lo) / (hi - lo)) * (y0 - y1);

  // grid and tick labels
  ctx.lineWidth = 1;
  ctx.strokeStyle = GRID;
  ctx.fillStyle = AXIS;
  ctx.font = FONT;
  ctx.beginPath();
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = Math.ceil(lo / ystep) * ystep; v <= hi + ystep / 2; v += ystep) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.moveTo(x0, y);
    ctx.lineTo(x1, y);
    ctx.fillText(yLabel(v, ystep), x0 - 6, y);
  }
  // a time axis steps in seconds, minutes, hours; a number axis as the y axis does
  const xstep = isBars ? niceStep(t1 - t0, Math.max(2, Math.floor((x1 - x0) / 90)))
    : STEPS.find((s) => ((x1 - x0) * s) / (t1 - t0) >= 90) || STEPS[STEPS.length - 1];
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let v = Math.ceil(t0 / xstep) * xstep; v <= t1 + xstep * 1e-9; v += xstep) {
    const x = Math.round(X(v)) + 0.5;
    ctx.moveTo(x, y1);
    ctx.lineTo(x, y0);
    ctx.fillText(isBars ? yLabel(v, xstep) : xLabel(v, xstep), x, y0 + 5);
  }
  ctx.stroke();
  ctx.strokeStyle = AXIS;
  ctx.beginPath();
  ctx.moveTo(x0 + 0.5, y1);
  ctx.lineTo(x0 + 0.5, y0 + 0.5);
  ctx.lineTo(x1, y0 + 0.5);
  ctx.stroke();

  // axis labels (the units)
  ctx.font = LABEL_FONT;
  ctx.fillText(model.x_label, (x0 + x1) / 2, h - 14);
  ctx.save();
  ctx.translate(12, (y0 + y1) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle";
  ctx.fillText(model.y_label, 0, 0);
  ctx.restore();

  // the series: a line each, broken where a value is missing (trace), or bars
  ctx.save();
  ctx.beginPath();
  ctx.rect(x0, y1 - 1, x1 - x0, y0 - y1 + 2);
  ctx.clip();
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  for (const s of series) {
    const col = src.data[s.column];
    if (isBars) {
      ctx.fillStyle = s.color;
      ctx.globalAlpha = 0.7;
      bars(ctx, t, tEnd, col, n, X, Y);
      ctx.globalAlpha = 1;
      continue;
    }
    ctx.strokeStyle = s.color;
    ctx.beginPath();
    trace(ctx, t, col, n, X, Y);
    ctx.stroke();
  }
  // the marker (the alert threshold): a dashed line across the plot at that x
  const m = model.marker;
  if (m != null && Number.isFinite(m) && m >= t0 && m <= t1) {
    const x = Math.round(X(m)) + 0.5;
    ctx.strokeStyle = model.marker_color;
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(x, y1);
    ctx.lineTo(x, y0);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.restore();

  // legend, when there is more than one series
  if (series.length > 1) {
    ctx.font = FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let x = x0 + 8;
    for (const s of series) {
      ctx.fillStyle = s.color;
      ctx.fillRect(x, y1 + 6, 14, 3);
      ctx.fillStyle = AXIS;
      ctx.fillText(s.label, x + 18, y1 + 8);
      x += 26 + ctx.measureText(s.label).width;
    }
  }
  return true;
}

// The rows of a source fed by a socket of its own (dashboards/push.py), one socket per feed however many
// charts share it: url -> {users, ws, failures, closed}
const FEEDS = new Map();
const RETRIES = 5;  // a feed that fails this many times in a row stops trying (its page's session is gone)

function newestSeq(src) {
  const n = src.get_length() || 0;
  const seq = src.data.seq;
  return n > 0 && seq !== undefined ? Number(seq[n - 1]) : NaN;
}

// The message's rows that the source does not hold yet (a reconnect, or a first frame that came with the
// session, may overlap them), with JSON's nulls back as NaN (a gap in the line, not a zero).
export function newRows(rows, last) {
  const seq = rows.seq || [];
  let from = 0;
  if (Number.isFinite(last)) while (from < seq.length && Number(seq[from]) <= last) from++;
  if (from === seq.length) return null;
  const out = {};
  for (const [name, col] of Object.entries(rows)) {
    out[name] = col.slice(from).map((v) => (v === null ? NaN : v));
  }
  return out;
}

function subscribe(url, src) {
  const known = FEEDS.get(url);
  if (known) { known.users++; return; }
  const feed = {users: 1, ws: null, failures: 0, closed: false};
  FEEDS.set(url, feed);
  const connect = () => {
    const u = new URL(url, window.location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const last = newestSeq(src);
    if (Number.isFinite(last)) u.searchParams.set("after", String(last));
    const ws = new WebSocket(u);
    feed.ws = ws;
    ws.onopen = () => { feed.failures = 0; };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      const rows = newRows(msg.rows || {}, newestSeq(src));
      // sync: false: these rows came from the server; Bokeh would otherwise send each of them back to it
      if (rows !== null) src.stream(rows, msg.rollover, {sync: false});
    };
    ws.onclose = () => {
      if (feed.closed || ++feed.failures > RETRIES) return;
      setTimeout(connect, 1000 * feed.failures);
    };
  };
  connect();
}

function unsubscribe(url) {
  const feed = FEEDS.get(url);
  if (!feed || --feed.users > 0) return;
  feed.closed = true;
  FEEDS.delete(url);
  if (feed.ws) feed.ws.close();
}

export function render({ model, el }) {
  const canvas = document.createElement("canvas");
  canvas.className = "iso-livechart";
  canvas.style.display = "block";
  canvas.style.width = "100%";
  canvas.style.height = `${model.chart_height}px`;
  const ctx = canvas.getContext("2d");
  const src = model.source;
  let queued = false;
  const draw = () => {
    queued = false;
    if (canvas.isConnected && paint(canvas, ctx, model, src)) {  // the browser test counts real draws only
      canvas.dataset.paints = String(Number(canvas.dataset.paints || 0) + 1);
    }
  };
  // rows can come several times per frame (a page catching up): they are drawn once, on the next frame
  const request = () => {
    if (!queued) { queued = true; requestAnimationFrame(draw); }
  };
  const signals = src ? [src.streaming, src.patching, src.change] : [];
  for (const sig of signals) sig.connect(request);
  const resized = new ResizeObserver(request);
  resized.observe(canvas);
  model.on(["series", "heading", "y_label", "x_label", "empty_text", "marker", "x_start", "x_end"], request);
  const feed = model.feed;
  if (feed && src) subscribe(feed, src);
  model.on("remove", () => {
    resized.disconnect();
    for (const sig of signals) sig.disconnect(request);
    if (feed && src) unsubscribe(feed);
  });
  request();
  return canvas;
}
