// A fedsync device in Node.js, standard library only, written from docs/protocol.md.
// A float32 linear model y = x.w + b (w: 3x1, b: 1) trained by one gradient step on synthetic data.
// Usage: node device.js [--port 8000] [--token T] [--seed 1]   (prints its URL on the first line)
"use strict";
const http = require("http");
const crypto = require("crypto");

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => (i % 2 ? a : [...a, [v.replace(/^--/, ""), all[i + 1]]]), []));
const TOKEN = args.token || process.env.FEDSYNC_TOKEN || null;
const SEED = Number(args.seed || 1);
const LAYOUT = [{ name: "w", shape: [3, 1], dtype: "float32" }, { name: "b", shape: [1], dtype: "float32" }];
const model = { w: new Float32Array(3), b: new Float32Array(1) };
const MAX_WAIT = 60, MAX_REP = 2 ** 53;

// docs/protocol.md "The canonical JSON form": sorted keys, no spaces, non-ASCII and DEL as \uXXXX.
function canonical(v) {
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (v !== null && typeof v === "object") return "{" + Object.keys(v).sort().map((k) => canonical(k) + ":" + canonical(v[k])).join(",") + "}";
  if (typeof v === "string") return JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  return JSON.stringify(v);
}
const SPECS = "arrays:sha256:" + crypto.createHash("sha256").update(canonical(LAYOUT), "utf8").digest("hex").slice(0, 16);

// Synthetic private data: y = 2*x0 - x1 + 0.5*x2 + 1 on 40 points.
function data(n) {
  let s = SEED >>> 0; const rnd = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const xs = [], ys = [];
  for (let i = 0; i < n; i++) { const x = [rnd(), rnd(), rnd()]; xs.push(x); ys.push(2 * x[0] - x[1] + 0.5 * x[2] + 1); }
  return { xs, ys };
}
const DATA = data(40);
function mse() {
  let l = 0; DATA.xs.forEach((x, i) => { const e = x[0] * model.w[0] + x[1] * model.w[1] + x[2] * model.w[2] + model.b[0] - DATA.ys[i]; l += e * e; });
  return l / DATA.xs.length;
}
function train(config) {
  const lr = typeof config.lr === "number" ? config.lr : 0.1;
  const g = [0, 0, 0, 0], n = DATA.xs.length;
  DATA.xs.forEach((x, i) => { const e = x[0] * model.w[0] + x[1] * model.w[1] + x[2] * model.w[2] + model.b[0] - DATA.ys[i]; for (let j = 0; j < 3; j++) g[j] += 2 * e * x[j] / n; g[3] += 2 * e / n; });
  for (let j = 0; j < 3; j++) model.w[j] -= lr * g[j];
  model.b[0] -= lr * g[3];
  return { samples: n, metrics: { loss: mse() } };
}

// docs/protocol.md "Array payloads": 8-byte little-endian header length, JSON header padded to 8, data.
function encode(metadata) {
  const header = { __metadata__: metadata }; let off = 0;
  for (const t of LAYOUT) { const n = model[t.name].length * 4; header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + n] }; off += n; }
  let text = JSON.stringify(header); text += " ".repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  return Buffer.concat([len, Buffer.from(text), ...LAYOUT.map((t) => Buffer.from(model[t.name].buffer.slice(0)))]);
}
function decode(buf) { // the arrays, or throws with the reason
  if (buf.length < 8) throw new Error("payload shorter than its 8-byte header length");
  const n = buf.readBigUInt64LE(0); if (n > BigInt(buf.length - 8) || n > 1048576n) throw new Error("header length beyond the payload");
  const header = JSON.parse(buf.subarray(8, 8 + Number(n)).toString("utf8")); const data = buf.subarray(8 + Number(n));
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  if (names.length !== LAYOUT.length) throw new Error("expected arrays w and b");
  const out = {}; let covered = 0;
  for (const t of LAYOUT) {
    const e = header[t.name];
    if (!e || e.dtype !== "F32" || JSON.stringify(e.shape) !== JSON.stringify(t.shape)) throw new Error(`array ${t.name}: expected F32 ${JSON.stringify(t.shape)}`);
    const [a, b] = e.data_offsets || []; const size = model[t.name].length * 4;
    if (!Number.isInteger(a) || b - a !== size || b > data.length) throw new Error(`array ${t.name}: bad data_offsets`);
    const v = new Float32Array(size / 4); for (let i = 0; i < v.length; i++) { v[i] = data.readFloatLE(a + 4 * i); if (!Number.isFinite(v[i])) throw new Error(`array ${t.name} holds NaN or infinity`); }
    out[t.name] = v; covered += size;
  }
  if (covered !== data.length) throw new Error("data section not covered exactly");
  return out;
}

let last = 0, job = null; // job: {rep, done, body, error, waiters}
const json = (res, status, obj, extra = {}) => { const b = Buffer.from(JSON.stringify(obj)); res.writeHead(status, { "Content-Type": "application/json", "Content-Length": b.length, ...extra }); res.end(b); };
const fail = (res, status, error, message) => json(res, status, { error, message });
function readBody(req, res, limit, done) {
  const raw = req.headers["content-length"];
  if (raw === undefined) return fail(res, 411, "length_required", "send a Content-Length");
  if (!/^[0-9]{1,19}$/.test(raw)) return fail(res, 400, "bad_content_length", "Content-Length is not a number of bytes");
  if (Number(raw) > limit) return fail(res, 413, "too_large", `payload above ${limit} bytes`);
  const chunks = []; let got = 0;
  req.on("data", (c) => { got += c.length; if (got <= limit) chunks.push(c); });
  req.on("end", () => (got !== Number(raw) ? fail(res, 400, "truncated", "the body ended early") : done(Buffer.concat(chunks))));
}
function config(req) {
  const raw = req.headers["x-fedsync-config"]; if (raw === undefined) return {};
  const c = JSON.parse(raw); if (c === null || typeof c !== "object" || Array.isArray(c)) throw new Error("not an object");
  return c;
}
function checked(req, res, rep, then) { // specs, config, body: docs/protocol.md's order from 411 on
  readBody(req, res, 4096, (body) => {
    const specs = req.headers["x-fedsync-specs"];
    if (specs === undefined) return fail(res, 400, "missing_specs", "send the specs in X-Fedsync-Specs");
    if (specs !== SPECS) return fail(res, 409, "specs_mismatch", `payload specs ${specs.slice(0, 200)} do not match this device's ${SPECS}`);
    let cfg; try { cfg = config(req); } catch (e) { return fail(res, 400, "bad_config", `X-Fedsync-Config: ${e.message}`); }
    let arrays; try { arrays = decode(body); } catch (e) { return fail(res, 400, "malformed_payload", `payload rejected: ${e.message}`); }
    then(arrays, cfg);
  });
}
function answerResult(req, res, rep) {
  if (job.error) return fail(res, 500, "training_failed", job.error);
  const headers = { "Content-Type": "application/octet-stream", "Content-Length": job.body.length, "X-Fedsync-Specs": SPECS, "X-Fedsync-Repetition": String(rep) };
  res.writeHead(200, headers); res.end(req.method === "HEAD" ? undefined : job.body);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://device");
  if (TOKEN !== null) {
    const m = /^bearer\s+(.*)$/i.exec((req.headers.authorization || "").trim()); const given = Buffer.from(m ? m[1].trim() : ""), want = Buffer.from(TOKEN);
    if (!(given.length === want.length && crypto.timingSafeEqual(given, want))) return fail(res, 401, "unauthorized", m ? "token refused" : "token missing: send Authorization: Bearer <token>");
  }
  const path = url.pathname;
  if (path === "/info") {
    if (req.method !== "GET" && req.method !== "HEAD") return fail(res, 405, "method_not_allowed", "GET /info");
    return json(res, 200, { protocol: 1, fedsync: "node-example", type: "FedArrays", specs: SPECS, repetition: last, state: job && !job.done ? "training" : "idle", samples: job && job.samples || 0, summary: { weights: LAYOUT }, aggregator: false });
  }
  const m = /^\/([0-9]+)\/(submit|result|evaluate)$/.exec(path);
  if (!m) return fail(res, 404, "not_found", `no route ${path.slice(0, 100)}`);
  const rep = Number(m[1]), route = m[2];
  const allowed = route === "result" ? ["GET", "HEAD"] : ["POST"];
  if (!allowed.includes(req.method)) return fail(res, 405, "method_not_allowed", `${route} takes ${allowed.join(", ")}`);
  if (m[1].length > 16 || BigInt(m[1]) > BigInt(MAX_REP)) return fail(res, 400, "bad_repetition", "the repetition is above 2**53");
  if (route === "submit") {
    if (rep <= last) return fail(res, 409, "stale_repetition", `repetition ${rep} is not above ${last}`);
    if (job && !job.done) return fail(res, 409, "busy", "still training");
    return checked(req, res, rep, (arrays, cfg) => {
      last = rep; model.w.set(arrays.w); model.b.set(arrays.b);
      job = { rep, done: false, waiters: [] };
      json(res, 202, { repetition: rep, state: "training" });
      setImmediate(() => {
        try { const r = train(cfg); job.samples = r.samples; job.body = encode({ "fedsync.samples": String(r.samples), "fedsync.metrics": JSON.stringify(r.metrics), "fedsync.specs": SPECS }); }
        catch (e) { job.error = `${e.name}: ${e.message}`; }
        job.done = true; job.waiters.splice(0).forEach((w) => w());
      });
    });
  }
  if (route === "evaluate") {
    if (job && !job.done) return fail(res, 409, "busy", "still training");
    return checked(req, res, rep, (arrays) => {
      const own = { w: model.w.slice(), b: model.b.slice() }; model.w.set(arrays.w); model.b.set(arrays.b);
      const loss = mse(); model.w.set(own.w); model.b.set(own.b);
      json(res, 200, { repetition: rep, samples: DATA.xs.length, metrics: { loss } });
    });
  }
  // result: the repetition, then the job, then wait (docs/protocol.md, "wait, exactly")
  if (!job || job.rep !== rep) return fail(res, 404, "unknown_repetition", `no work for repetition ${rep} here`);
  const raw = url.searchParams.get("wait") ?? "0", wait = Number(raw);
  if (raw.trim() === "" || raw.length > 40 || !Number.isFinite(wait) || wait < 0) return fail(res, 400, "bad_wait", "wait must be a number of seconds >= 0, e.g. ?wait=10");
  if (job.done) return answerResult(req, res, rep);
  const current = job; let timer = null;
  const ready = () => { clearTimeout(timer); answerResult(req, res, rep); };
  current.waiters.push(ready);
  timer = setTimeout(() => { current.waiters.splice(current.waiters.indexOf(ready), 1); json(res, 202, { repetition: rep, state: "training" }); }, Math.min(wait, MAX_WAIT) * 1000);
});
server.listen(Number(args.port || 8000), args.host || "127.0.0.1", () => console.log(`http://127.0.0.1:${server.address().port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
