// spec/support/gcs/fake.js — a FAKE of Google Cloud Storage's JSON API and
// Google's OAuth2 token endpoint, written for capil's tests. It stands in for
// what the firebase-tools Storage emulator lacks (chunked resumable uploads,
// status queries, fault injection, authentication), following Google's
// documentation of resumable uploads
// (https://cloud.google.com/storage/docs/performing-resumable-uploads,
// https://cloud.google.com/storage/docs/json_api/v1/how-tos/resumable-upload):
//   - POST /upload/storage/v1/b/B/o?uploadType=resumable&name=N opens a
//     session (JSON metadata body, X-Upload-Content-Type/-Length headers) and
//     answers 200 with its URI in Location;
//   - PUT <session URI> with Content-Range "bytes A-B/TOTAL" or "bytes A-B/*"
//     sends a chunk: every chunk but the last is a multiple of 256 KiB (else
//     400); the server persists whole 256 KiB units only, so a connection cut
//     mid-chunk keeps the complete units received so far; bytes before the
//     persisted offset are ignored (overlap is allowed); it answers 308 with
//     "Range: bytes=0-N" (no Range while nothing is persisted) until the
//     object is complete, then 200 with the object resource;
//   - PUT with "Content-Range: bytes */TOTAL" or "bytes */*" (no body) asks
//     the session's state: 308 + Range, or 200 with the object once complete;
//   - like Google, the session URI itself authorises the PUTs: they need no
//     Authorization header.
// Also: media and multipart uploads, object metadata, alt=media downloads,
// listing with pages, DELETE, PATCH, the public form GET /B/NAME (as
// storage.googleapis.com serves public objects, never authenticated), Range
// requests (206) on every media GET, the JWT-bearer and refresh-token grants
// of https://oauth2.googleapis.com/token (POST /token; the JWT's claims are
// checked, its signature only when a public key is given) and the GCE
// metadata server's token path. Objects live in files under DIR.
//
// Test controls (never authenticated, not counted in stats):
//   POST /_fake/inject {action: "drop", at_bytes: N | [N, ...], target?: "upload"|"download"}
//        the next upload PUT (download: media GET) whose body crosses the
//        absolute object offset N is cut once the server has received (sent)
//        exactly the bytes before N;
//   POST /_fake/inject {action: "status", status: 503, count?: 1, retry_after?: s,
//                       target?: "upload"|"download"|"api"|"token"}
//        the next `count` matching requests answer `status`;
//   POST /_fake/inject {action: "expire_tokens"}: every token issued so far expires now;
//   GET  /_fake/stats, POST /_fake/reset (objects, sessions, stats and
//        injections; issued tokens stay valid).
//
//   node fake.js PORT DIR [OPTIONS_JSON]
// OPTIONS_JSON: {token: bool (API calls need a Bearer token from /token),
// expires_in: seconds (default 3600), forbidden_buckets: [names] (403),
// jwt_public_key: PEM path (then JWT signatures are verified too)}.
// Prints "listening 127.0.0.1:PORT" once bound.
'use strict';

const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const UNIT = 256 * 1024;
const PROJECT = 'demo-test';

const port = Number(process.argv[2]);
const DIR = process.argv[3];
const OPTS = JSON.parse(process.argv[4] || '{}');
if (!Number.isInteger(port) || port <= 0 || !DIR) {
  console.error('usage: node fake.js PORT DIR [OPTIONS_JSON]');
  process.exit(2);
}
const EXPIRES_IN = OPTS.expires_in === undefined ? 3600 : Number(OPTS.expires_in);
const FORBIDDEN = new Set(OPTS.forbidden_buckets || []);
const JWT_KEY = OPTS.jwt_public_key ? fs.readFileSync(OPTS.jwt_public_key, 'utf8') : null;

// ---------------------------------------------------------------- CRC32C
// Castagnoli (reflected polynomial 0x82F63B78), slice-by-8: GCS's crc32c is
// this value as 4 big-endian bytes in base64.
const CRC = (() => {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n];
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff] ^ (c >>> 8);
      t[k * 256 + n] = c;
    }
  }
  return t;
})();

function crc32c(crc, buf) {
  let c = ~crc;
  let i = 0;
  const n = buf.length;
  for (; n - i >= 8; i += 8) {
    const a = c ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24));
    c = CRC[7 * 256 + (a & 0xff)] ^ CRC[6 * 256 + ((a >>> 8) & 0xff)]
      ^ CRC[5 * 256 + ((a >>> 16) & 0xff)] ^ CRC[4 * 256 + (a >>> 24)]
      ^ CRC[3 * 256 + buf[i + 4]] ^ CRC[2 * 256 + buf[i + 5]]
      ^ CRC[256 + buf[i + 6]] ^ CRC[buf[i + 7]];
  }
  for (; i < n; i++) c = CRC[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// The digests of an object, fed in order as its bytes are persisted.
class Digests {
  constructor() {
    this.md5 = crypto.createHash('md5');
    this.sha256 = crypto.createHash('sha256');
    this.crc = 0;
  }
  update(buf) {
    this.md5.update(buf);
    this.sha256.update(buf);
    this.crc = crc32c(this.crc, buf);
  }
  final() {
    const c = Buffer.alloc(4);
    c.writeUInt32BE(this.crc >>> 0);
    return { md5Hash: this.md5.digest('base64'), crc32c: c.toString('base64'), sha256: this.sha256.digest('hex') };
  }
}

// ---------------------------------------------------------------- state
let state;
let fileSeq = 0;
let generationSeq = 0;
const tokens = new Map(); // access token -> expiry (ms since the epoch)

function freshState() {
  return {
    objects: new Map(), // "B/N" -> object
    uploads: new Map(), // upload id -> session
    drops: [],          // {at, target}
    statuses: [],       // {status, count, retry_after, target}
    stats: {
      bytes_received: 0, resent_bytes: 0, requests: [], assertions: [], refreshes: [], tokens_issued: 0,
    },
  };
}

function reset() {
  if (state) {
    for (const u of state.uploads.values()) closeUpload(u);
  }
  fs.rmSync(path.join(DIR, 'objects'), { recursive: true, force: true });
  fs.rmSync(path.join(DIR, 'uploads'), { recursive: true, force: true });
  fs.mkdirSync(path.join(DIR, 'objects'), { recursive: true });
  fs.mkdirSync(path.join(DIR, 'uploads'), { recursive: true });
  state = freshState();
}

function closeUpload(u) {
  if (u.fd !== null) {
    fs.closeSync(u.fd);
    u.fd = null;
  }
}

// ---------------------------------------------------------------- helpers
function sendJSON(res, status, value, headers) {
  const body = Buffer.from(JSON.stringify(value));
  res.writeHead(status, Object.assign({
    'Content-Type': 'application/json; charset=UTF-8', 'Content-Length': body.length,
  }, headers || {}));
  res.end(body);
}

// A GCS-style JSON error.
function sendError(res, status, reason, message, headers) {
  sendJSON(res, status, {
    error: { code: status, message, errors: [{ message, domain: 'global', reason }] },
  }, headers);
}

function sendEmpty(res, status, headers) {
  res.writeHead(status, Object.assign({ 'Content-Length': '0' }, headers || {}));
  res.end();
}

// Reads a whole (small) body; `count` adds it to bytes_received.
function readBody(req, count) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (c) => {
      parts.push(c);
      if (count) state.stats.bytes_received += c.length;
    });
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

function objectKey(bucket, name) {
  return `${bucket}/${name}`;
}

function endpointOf(req) {
  return `http://${req.headers.host || `127.0.0.1:${port}`}`;
}

function resource(req, o) {
  const base = endpointOf(req);
  const enc = encodeURIComponent(o.name);
  return {
    kind: 'storage#object',
    id: `${o.bucket}/${o.name}/${o.generation}`,
    selfLink: `${base}/storage/v1/b/${o.bucket}/o/${enc}`,
    mediaLink: `${base}/download/storage/v1/b/${o.bucket}/o/${enc}?generation=${o.generation}&alt=media`,
    name: o.name,
    bucket: o.bucket,
    generation: String(o.generation),
    metageneration: String(o.metageneration),
    contentType: o.contentType,
    storageClass: 'STANDARD',
    size: String(o.size),
    md5Hash: o.md5Hash,
    crc32c: o.crc32c,
    etag: `${o.md5Hash}/${o.generation}`,
    timeCreated: o.timeCreated,
    updated: o.updated,
    metadata: o.metadata,
  };
}

// Stores a complete object from a file under DIR (moved into place).
function storeObject(bucket, name, file, size, digests, contentType, metadata) {
  const key = objectKey(bucket, name);
  const old = state.objects.get(key);
  if (old) fs.rmSync(old.file, { force: true });
  const dest = path.join(DIR, 'objects', String(++fileSeq));
  fs.renameSync(file, dest);
  const now = new Date().toISOString();
  const o = Object.assign({
    bucket, name, file: dest, size, contentType: contentType || 'application/octet-stream',
    metadata: metadata || undefined, generation: Date.now() * 1000 + (++generationSeq % 1000),
    metageneration: 1, timeCreated: now, updated: now,
  }, digests);
  state.objects.set(key, o);
  return o;
}

function storeBuffer(bucket, name, data, contentType, metadata) {
  const tmp = path.join(DIR, 'uploads', `media-${++fileSeq}`);
  fs.writeFileSync(tmp, data);
  const d = new Digests();
  d.update(data);
  return storeObject(bucket, name, tmp, data.length, d.final(), contentType, metadata);
}

// ifGenerationMatch: "0" means the object must not exist yet.
function preconditionFails(q, bucket, name) {
  const want = q.get('ifGenerationMatch');
  if (want === null) return false;
  const o = state.objects.get(objectKey(bucket, name));
  return want === '0' ? o !== undefined : (!o || String(o.generation) !== want);
}

// ---------------------------------------------------------------- auth
function issueToken() {
  const token = `ya29.fake-${crypto.randomBytes(24).toString('hex')}`;
  tokens.set(token, Date.now() + EXPIRES_IN * 1000);
  state.stats.tokens_issued += 1;
  return { access_token: token, expires_in: EXPIRES_IN, token_type: 'Bearer' };
}

// null when the request may go on, else [status, reason, message].
function authProblem(req) {
  if (!OPTS.token) return null;
  const m = /^Bearer\s+(\S+)$/.exec(req.headers.authorization || '');
  if (!m) return [401, 'required', 'Anonymous caller does not have storage access. Login Required.'];
  const exp = tokens.get(m[1]);
  if (exp === undefined || exp <= Date.now()) return [401, 'authError', 'Invalid Credentials'];
  return null;
}

function b64urlJSON(s) {
  if (!/^[A-Za-z0-9_-]+$/.test(s)) throw new Error('not base64url');
  return JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
}

// Checks a JWT-bearer assertion as Google does: three base64url parts, RS256,
// iss/scope/aud/iat/exp, aud = this token URI, a lifetime of at most an hour.
// Returns an error description or null.
function jwtProblem(req, jwt) {
  const parts = jwt.split('.');
  if (parts.length !== 3 || parts.some((p) => p === '')) return 'Invalid JWT: expected three parts';
  let header, claims;
  try {
    header = b64urlJSON(parts[0]);
    claims = b64urlJSON(parts[1]);
  } catch (e) {
    return `Invalid JWT: ${e.message}`;
  }
  if (!/^[A-Za-z0-9_-]+$/.test(parts[2])) return 'Invalid JWT: signature is not base64url';
  if (header.alg !== 'RS256') return 'Invalid JWT: alg must be RS256';
  for (const k of ['iss', 'scope', 'aud']) {
    if (typeof claims[k] !== 'string' || claims[k] === '') return `Invalid JWT: missing claim ${k}`;
  }
  if (!Number.isInteger(claims.iat) || !Number.isInteger(claims.exp)) return 'Invalid JWT: iat and exp must be integers';
  const now = Math.floor(Date.now() / 1000);
  if (claims.exp <= claims.iat || claims.exp - claims.iat > 3600 || claims.exp < now - 60 || claims.iat > now + 300) {
    return 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.'
      + ' Check your iat and exp values in the JWT claim.';
  }
  const aud = `${endpointOf(req)}/token`;
  if (claims.aud !== aud) return `Invalid JWT: aud must be ${aud}`;
  if (JWT_KEY) {
    const ok = crypto.verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), JWT_KEY,
      Buffer.from(parts[2], 'base64url'));
    if (!ok) return 'Invalid JWT Signature.';
  }
  return null;
}

async function tokenEndpoint(req, res) {
  const body = (await readBody(req)).toString('utf8');
  const form = new URLSearchParams(body);
  const grant = form.get('grant_type');
  if (grant === 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
    const assertion = form.get('assertion');
    if (!assertion) return sendJSON(res, 400, { error: 'invalid_request', error_description: 'Missing assertion' });
    state.stats.assertions.push(assertion);
    const problem = jwtProblem(req, assertion);
    if (problem) return sendJSON(res, 400, { error: 'invalid_grant', error_description: problem });
    return sendJSON(res, 200, issueToken(), { 'Cache-Control': 'no-store' });
  }
  if (grant === 'refresh_token') {
    const r = { client_id: form.get('client_id'), refresh_token: form.get('refresh_token') };
    if (!r.client_id || !form.get('client_secret') || !r.refresh_token) {
      return sendJSON(res, 400, { error: 'invalid_request', error_description: 'client_id, client_secret and refresh_token are required' });
    }
    state.stats.refreshes.push(r);
    return sendJSON(res, 200, Object.assign(issueToken(), { scope: 'https://www.googleapis.com/auth/devstorage.read_write' }));
  }
  return sendJSON(res, 400, { error: 'unsupported_grant_type', error_description: `Invalid grant_type: ${grant}` });
}

// The GCE metadata server (GCE_METADATA_HOST=127.0.0.1:PORT).
function metadataServer(req, res, p) {
  if (req.headers['metadata-flavor'] !== 'Google') {
    return sendEmpty(res, 403, { 'Metadata-Flavor': 'Google' });
  }
  const h = { 'Metadata-Flavor': 'Google' };
  if (p === '/computeMetadata/v1/instance/service-accounts/default/token') return sendJSON(res, 200, issueToken(), h);
  const text = {
    '/computeMetadata/v1/instance/service-accounts/default/email': `capil-test@${PROJECT}.iam.gserviceaccount.com`,
    '/computeMetadata/v1/project/project-id': PROJECT,
    '/computeMetadata/v1/': 'instance/\nproject/\n',
    '/': 'computeMetadata/\n',
  }[p];
  if (text === undefined) return sendEmpty(res, 404, h);
  res.writeHead(200, Object.assign({ 'Content-Type': 'application/text', 'Content-Length': Buffer.byteLength(text) }, h));
  return res.end(text);
}

// ---------------------------------------------------------------- injection
function takeStatus(target) {
  const i = state.statuses.findIndex((s) => s.target === target || (s.target === 'api' && target !== 'token'));
  if (i < 0) return null;
  const s = state.statuses[i];
  s.count -= 1;
  if (s.count <= 0) state.statuses.splice(i, 1);
  return s;
}

function sendInjected(res, s) {
  const reason = s.status === 429 ? 'rateLimitExceeded' : s.status >= 500 ? 'backendError' : 'injected';
  sendError(res, s.status, reason, `injected HTTP ${s.status}`,
    s.retry_after !== undefined ? { 'Retry-After': String(s.retry_after) } : undefined);
}

// The lowest pending drop of `target` inside [start, end].
function findDrop(target, start, end) {
  let best = null;
  for (const d of state.drops) {
    if (d.target === target && d.at >= start && d.at <= end && (!best || d.at < best.at)) best = d;
  }
  return best;
}

function inject(body) {
  const target = body.target || 'upload';
  if (body.action === 'drop') {
    if (target !== 'upload' && target !== 'download') throw new Error('drop target must be upload or download');
    const list = Array.isArray(body.at_bytes) ? body.at_bytes : [body.at_bytes];
    for (const at of list) {
      if (!Number.isInteger(at) || at < 0) throw new Error('at_bytes must be non-negative integers');
      state.drops.push({ at, target });
    }
  } else if (body.action === 'status') {
    if (!Number.isInteger(body.status) || body.status < 400) throw new Error('status must be an HTTP error status');
    if (!['upload', 'download', 'api', 'token'].includes(target)) throw new Error(`unknown target ${target}`);
    state.statuses.push({ status: body.status, count: body.count || 1, retry_after: body.retry_after, target });
  } else if (body.action === 'expire_tokens') {
    for (const t of tokens.keys()) tokens.set(t, 0);
  } else {
    throw new Error(`unknown action ${body.action}`);
  }
}

function statsView() {
  const objects = {};
  for (const [k, o] of state.objects) {
    objects[k] = {
      size: o.size, sha256: o.sha256, md5Hash: o.md5Hash, crc32c: o.crc32c, metadata: o.metadata,
      contentType: o.contentType, generation: String(o.generation),
    };
  }
  const uploads = {};
  for (const [id, u] of state.uploads) {
    uploads[id] = { bucket: u.bucket, name: u.name, persisted: u.persisted, total: u.total, complete: !!u.object };
  }
  return Object.assign({}, state.stats, {
    objects, uploads,
    pending: { drops: state.drops.slice(), statuses: state.statuses.slice() },
  });
}

async function control(req, res, p) {
  if (req.method === 'GET' && p === '/_fake/stats') return sendJSON(res, 200, statsView());
  if (req.method === 'POST' && p === '/_fake/reset') {
    await readBody(req);
    reset();
    return sendJSON(res, 200, { ok: true });
  }
  if (req.method === 'POST' && p === '/_fake/inject') {
    let body;
    try {
      body = JSON.parse((await readBody(req)).toString('utf8'));
      inject(body);
    } catch (e) {
      return sendJSON(res, 400, { error: `inject: ${e.message}` });
    }
    return sendJSON(res, 200, { ok: true });
  }
  return sendJSON(res, 404, { error: `no control ${req.method} ${p}` });
}

// ---------------------------------------------------------------- downloads
// Parses a single "bytes=" range against `size`: [start, end], null (whole
// object) or 'unsatisfiable'.
function parseRange(h, size) {
  if (!h) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(h.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start, end;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return null;
  }
  if (start >= size) return 'unsatisfiable';
  return [start, end];
}

function sendMedia(req, res, o) {
  const hdrs = {
    'Content-Type': o.contentType,
    'Accept-Ranges': 'bytes',
    ETag: `"${o.md5Hash}"`,
    'Last-Modified': new Date(o.updated).toUTCString(),
    'x-goog-hash': `crc32c=${o.crc32c},md5=${o.md5Hash}`,
    'x-goog-generation': String(o.generation),
    'x-goog-metageneration': String(o.metageneration),
    'x-goog-stored-content-length': String(o.size),
  };
  for (const [k, v] of Object.entries(o.metadata || {})) hdrs[`x-goog-meta-${k}`] = String(v);
  const r = parseRange(req.headers.range, o.size);
  if (r === 'unsatisfiable') {
    return sendError(res, 416, 'requestedRangeNotSatisfiable', 'The requested range cannot be satisfied.',
      { 'Content-Range': `bytes */${o.size}` });
  }
  const [start, end] = r || [0, o.size - 1];
  const status = r ? 206 : 200;
  if (r) hdrs['Content-Range'] = `bytes ${start}-${end}/${o.size}`;
  hdrs['Content-Length'] = String(end - start + 1);
  res.writeHead(status, hdrs);
  if (req.method === 'HEAD' || o.size === 0) return res.end();
  const drop = findDrop('download', start, end);
  if (drop) state.drops.splice(state.drops.indexOf(drop), 1);
  const last = drop ? drop.at - 1 : end;
  if (last < start) {
    res.flushHeaders();
    res.socket.end();
    return undefined;
  }
  const stream = fs.createReadStream(o.file, { start, end: last });
  stream.on('error', () => res.destroy());
  if (!drop) return stream.pipe(res);
  stream.pipe(res, { end: false });
  // the body stops short of Content-Length: the client sees a cut transfer
  stream.on('end', () => res.write('', () => res.socket && res.socket.end()));
  return undefined;
}

// ---------------------------------------------------------------- listing
function list(req, res, bucket, q) {
  const prefix = q.get('prefix') || '';
  const delimiter = q.get('delimiter') || '';
  const max = Math.max(1, Math.min(Number(q.get('maxResults')) || 1000, 1000));
  const after = q.get('pageToken') ? Buffer.from(q.get('pageToken'), 'base64url').toString('utf8') : null;
  const names = [...state.objects.values()].filter((o) => o.bucket === bucket && o.name.startsWith(prefix))
    .map((o) => o.name).sort();
  const entries = []; // {key, object?}
  const seen = new Set();
  for (const name of names) {
    let key = name;
    let isPrefix = false;
    if (delimiter) {
      const i = name.indexOf(delimiter, prefix.length);
      if (i >= 0) {
        key = name.slice(0, i + delimiter.length);
        isPrefix = true;
      }
    }
    if ((after !== null && key <= after) || seen.has(key)) continue;
    seen.add(key);
    entries.push(isPrefix ? { key } : { key, object: state.objects.get(objectKey(bucket, name)) });
  }
  const page = entries.slice(0, max);
  const out = { kind: 'storage#objects' };
  const items = page.filter((e) => e.object).map((e) => resource(req, e.object));
  const prefixes = page.filter((e) => !e.object).map((e) => e.key);
  if (items.length) out.items = items;
  if (prefixes.length) out.prefixes = prefixes;
  if (entries.length > max) out.nextPageToken = Buffer.from(page[page.length - 1].key).toString('base64url');
  return sendJSON(res, 200, out);
}

// ---------------------------------------------------------------- uploads
function parseContentRange(h) {
  if (h === undefined) return undefined;
  let m = /^bytes \*\/(\d+|\*)$/.exec(h.trim());
  if (m) return { query: true, total: m[1] === '*' ? null : Number(m[1]) };
  m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(h.trim());
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) };
}

function persistedRange(u) {
  return u.persisted > 0 ? { Range: `bytes=0-${u.persisted - 1}` } : {};
}

// Appends whole units of u.pending to the session's file (all of it when
// `all`, for the last chunk).
function flush(u, all) {
  const n = all ? u.pendingLen : u.pendingLen - (u.pendingLen % UNIT);
  if (n === 0) return;
  const buf = Buffer.concat(u.pending, u.pendingLen);
  const out = buf.subarray(0, n);
  fs.writeSync(u.fd, out);
  u.digests.update(out);
  u.persisted += n;
  const rest = buf.subarray(n);
  u.pending = rest.length ? [Buffer.from(rest)] : [];
  u.pendingLen = rest.length;
}

function finalize(req, res, u) {
  if (preconditionFails(u.query, u.bucket, u.name)) {
    return sendError(res, 412, 'conditionNotMet', 'At least one of the pre-conditions you specified did not hold.');
  }
  closeUpload(u);
  u.object = storeObject(u.bucket, u.name, u.file, u.persisted, u.digests.final(), u.contentType, u.metadata);
  return sendJSON(res, 200, resource(req, u.object));
}

async function startResumable(req, res, bucket, q) {
  const raw = await readBody(req);
  let meta = {};
  if (raw.length) {
    try {
      meta = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      return sendError(res, 400, 'parseError', `Parse Error: ${e.message}`);
    }
  }
  const name = q.get('name') || meta.name;
  if (!name) return sendError(res, 400, 'required', 'Required parameter: name');
  if (preconditionFails(q, bucket, name)) {
    return sendError(res, 412, 'conditionNotMet', 'At least one of the pre-conditions you specified did not hold.');
  }
  const lenHdr = req.headers['x-upload-content-length'];
  if (lenHdr !== undefined && !/^\d+$/.test(lenHdr)) return sendError(res, 400, 'invalid', 'Invalid X-Upload-Content-Length');
  const id = crypto.randomBytes(16).toString('hex');
  const file = path.join(DIR, 'uploads', id);
  state.uploads.set(id, {
    id, bucket, name, file, fd: fs.openSync(file, 'w'), query: q,
    contentType: req.headers['x-upload-content-type'] || meta.contentType || 'application/octet-stream',
    metadata: meta.metadata, total: lenHdr === undefined ? null : Number(lenHdr),
    persisted: 0, pending: [], pendingLen: 0, digests: new Digests(), object: null, active: null,
  });
  const location = `${endpointOf(req)}/upload/storage/v1/b/${encodeURIComponent(bucket)}/o`
    + `?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${id}`;
  return sendEmpty(res, 200, { Location: location, 'X-GUploader-UploadID': id });
}

// Answers after draining the body (`count`: object bytes, added to bytes_received).
async function drainThen(req, fn, count) {
  await readBody(req, count);
  return fn();
}

async function putChunk(req, res, u, record) {
  record.range = req.headers['content-range'] || null;
  let cr = parseContentRange(req.headers['content-range']);
  const clen = req.headers['content-length'] === undefined ? null : Number(req.headers['content-length']);
  if (cr === undefined) {
    // the whole object in one request
    if (clen === null) return drainThen(req, () => sendError(res, 400, 'invalid', 'Content-Length or Content-Range required'), true);
    cr = clen === 0 ? { query: true, total: 0 } : { start: 0, end: clen - 1, total: clen };
  }
  if (cr === null) return drainThen(req, () => sendError(res, 400, 'invalid', `Invalid Content-Range: ${req.headers['content-range']}`), true);
  if (u.object) return drainThen(req, () => sendJSON(res, 200, resource(req, u.object)), true);
  if (cr.total !== null && u.total !== null && cr.total !== u.total) {
    return drainThen(req, () => sendError(res, 400, 'invalid',
      `Content-Range total ${cr.total} differs from X-Upload-Content-Length ${u.total}`), true);
  }
  const total = cr.total !== null ? cr.total : u.total;
  if (cr.query) {
    return drainThen(req, () => {
      if (total !== null && u.persisted + u.pendingLen === total) {
        flush(u, true);
        return finalize(req, res, u);
      }
      return sendEmpty(res, 308, persistedRange(u));
    }, true);
  }
  const len = cr.end - cr.start + 1;
  const final = total !== null && cr.end + 1 === total;
  let problem = null;
  if (cr.end < cr.start) problem = 'Content-Range end before start';
  else if (clen !== null && clen !== len) problem = `Content-Length ${clen} does not match Content-Range (${len} bytes)`;
  else if (total !== null && cr.end >= total) problem = `Content-Range beyond the total size ${total}`;
  else if (!final && len % UNIT !== 0) problem = `chunk of ${len} bytes: chunks except the last must be a multiple of ${UNIT} bytes`;
  else if (cr.start > u.persisted) problem = `chunk starts at ${cr.start} but only ${u.persisted} bytes are persisted`;
  if (problem) return drainThen(req, () => sendError(res, 400, 'invalid', problem), true);

  u.active = req;
  u.pending = [];
  u.pendingLen = 0;
  const drop = findDrop('upload', cr.start, cr.end);
  let pos = cr.start; // absolute offset of the next body byte
  let cut = false;
  return new Promise((resolve) => {
    const take = (chunk) => {
      if (u.active !== req || cut) return;
      let c = chunk;
      if (drop && pos + c.length >= drop.at) {
        c = c.subarray(0, drop.at - pos);
        cut = true;
      }
      state.stats.bytes_received += c.length;
      const skip = Math.min(c.length, Math.max(0, u.persisted + u.pendingLen - pos));
      state.stats.resent_bytes += skip;
      if (c.length > skip) {
        u.pending.push(Buffer.from(c.subarray(skip)));
        u.pendingLen += c.length - skip;
        if (u.pendingLen >= UNIT) flush(u, false);
      }
      pos += c.length;
      if (cut) {
        state.drops.splice(state.drops.indexOf(drop), 1);
        record.dropped = true;
        u.pending = [];
        u.pendingLen = 0;
        u.active = null;
        req.socket.destroy();
        resolve();
      }
    };
    if (drop && drop.at === cr.start) take(Buffer.alloc(0));
    if (cut) return;
    req.on('data', take);
    req.on('end', () => {
      if (cut) return resolve();
      if (u.active !== req) {
        sendError(res, 503, 'backendError', 'superseded by a newer request on this upload session');
        return resolve();
      }
      u.active = null;
      if (pos !== cr.end + 1) {
        u.pending = [];
        u.pendingLen = 0;
        sendError(res, 400, 'invalid', `body of ${pos - cr.start} bytes, Content-Range says ${len}`);
      } else if (final) {
        flush(u, true);
        finalize(req, res, u);
      } else {
        // a chunk that began inside a unit leaves a partial unit: not kept
        u.pending = [];
        u.pendingLen = 0;
        sendEmpty(res, 308, persistedRange(u));
      }
      resolve();
    });
    req.on('close', () => {
      if (u.active === req && !req.complete) {
        // the client went away mid-chunk: whole units stay persisted
        u.active = null;
        u.pending = [];
        u.pendingLen = 0;
      }
      resolve();
    });
  });
}

// Splits a multipart/related body into [{headers, body}].
function parseMultipart(buf, boundary) {
  const delim = Buffer.from(`--${boundary}`);
  let i = buf.indexOf(delim);
  if (i < 0) return null;
  const parts = [];
  for (;;) {
    i += delim.length;
    if (buf.subarray(i, i + 2).toString() === '--') return parts;
    const headEnd = buf.indexOf('\r\n\r\n', i);
    if (headEnd < 0) return null;
    const headers = {};
    for (const line of buf.subarray(i, headEnd).toString('utf8').split('\r\n')) {
      const m = /^([^:]+):\s*(.*)$/.exec(line);
      if (m) headers[m[1].toLowerCase()] = m[2];
    }
    const next = buf.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]), headEnd + 4);
    if (next < 0) return null;
    parts.push({ headers, body: buf.subarray(headEnd + 4, next) });
    i = next + 2;
  }
}

async function simpleUpload(req, res, bucket, q, type) {
  const data = await readBody(req, type === 'media');
  let name = q.get('name');
  let contentType = req.headers['content-type'];
  let metadata;
  let body = data;
  if (type === 'multipart') {
    const m = /boundary="?([^";]+)"?/.exec(contentType || '');
    const parts = m && /^multipart\/related/i.test(contentType) ? parseMultipart(data, m[1]) : null;
    if (!parts || parts.length !== 2) return sendError(res, 400, 'invalid', 'Invalid multipart request: expected metadata and media parts');
    let meta;
    try {
      meta = JSON.parse(parts[0].body.toString('utf8'));
    } catch (e) {
      return sendError(res, 400, 'parseError', `Parse Error in the metadata part: ${e.message}`);
    }
    name = name || meta.name;
    metadata = meta.metadata;
    contentType = parts[1].headers['content-type'] || meta.contentType;
    body = parts[1].body;
    state.stats.bytes_received += body.length;
  }
  if (!name) return sendError(res, 400, 'required', 'Required parameter: name');
  if (preconditionFails(q, bucket, name)) {
    return sendError(res, 412, 'conditionNotMet', 'At least one of the pre-conditions you specified did not hold.');
  }
  return sendJSON(res, 200, resource(req, storeBuffer(bucket, name, body, contentType, metadata)));
}

// ---------------------------------------------------------------- routing
async function route(req, res, url, record) {
  const p = url.pathname;
  const q = url.searchParams;
  if (p === '/token') {
    if (req.method !== 'POST') return sendEmpty(res, 405);
    const s = takeStatus('token');
    if (s) return drainThen(req, () => sendInjected(res, s));
    return tokenEndpoint(req, res);
  }
  if (p === '/' || p.startsWith('/computeMetadata/')) {
    const s = takeStatus('token');
    if (s) return drainThen(req, () => sendInjected(res, s));
    return metadataServer(req, res, p);
  }

  let m = /^\/upload\/storage\/v1\/b\/([^/]+)\/o$/.exec(p);
  if (m) {
    const bucket = decodeURIComponent(m[1]);
    const type = q.get('uploadType');
    const objectBytes = req.method === 'PUT' || type === 'media' || type === 'multipart';
    const s = takeStatus('upload');
    if (s) return drainThen(req, () => sendInjected(res, s), objectBytes);
    if (q.get('upload_id') !== null) {
      // the session URI carries its own authority: no token needed
      const u = state.uploads.get(q.get('upload_id'));
      if (!u || u.bucket !== bucket) return drainThen(req, () => sendError(res, 404, 'notFound', 'No such upload session'));
      if (req.method === 'DELETE') {
        closeUpload(u);
        state.uploads.delete(u.id);
        fs.rmSync(u.file, { force: true });
        return sendEmpty(res, 499);
      }
      if (req.method !== 'PUT') return drainThen(req, () => sendEmpty(res, 405));
      return putChunk(req, res, u, record);
    }
    const auth = authProblem(req);
    if (auth) return drainThen(req, () => sendError(res, auth[0], auth[1], auth[2], { 'WWW-Authenticate': 'Bearer realm="https://accounts.google.com/"' }));
    if (FORBIDDEN.has(bucket)) {
      return drainThen(req, () => sendError(res, 403, 'forbidden',
        `capil-test does not have storage.objects.create access to the Google Cloud Storage bucket ${bucket}.`));
    }
    if (req.method !== 'POST') return drainThen(req, () => sendEmpty(res, 405));
    if (type === 'resumable') return startResumable(req, res, bucket, q);
    if (type === 'media' || type === 'multipart') return simpleUpload(req, res, bucket, q, type);
    return drainThen(req, () => sendError(res, 400, 'invalid', `Unsupported uploadType: ${type}`));
  }

  m = /^\/(?:storage|download\/storage)\/v1\/b\/([^/]+)\/o(?:\/(.+))?$/.exec(p);
  if (m) {
    const bucket = decodeURIComponent(m[1]);
    const name = m[2] === undefined ? null : decodeURIComponent(m[2]);
    const media = name !== null && q.get('alt') === 'media';
    const s = takeStatus(media ? 'download' : 'api');
    if (s) return drainThen(req, () => sendInjected(res, s));
    const auth = authProblem(req);
    if (auth) return drainThen(req, () => sendError(res, auth[0], auth[1], auth[2], { 'WWW-Authenticate': 'Bearer realm="https://accounts.google.com/"' }));
    if (FORBIDDEN.has(bucket)) {
      return drainThen(req, () => sendError(res, 403, 'forbidden',
        `capil-test does not have storage.objects.${name === null ? 'list' : 'get'} access to the Google Cloud Storage bucket ${bucket}.`));
    }
    if (name === null) {
      if (req.method !== 'GET') return drainThen(req, () => sendEmpty(res, 405));
      return list(req, res, bucket, q);
    }
    const o = state.objects.get(objectKey(bucket, name));
    const body = await readBody(req);
    if (!o) return sendError(res, 404, 'notFound', `No such object: ${bucket}/${name}`);
    if (req.method === 'GET' || req.method === 'HEAD') return media ? sendMedia(req, res, o) : sendJSON(res, 200, resource(req, o));
    if (req.method === 'DELETE') {
      state.objects.delete(objectKey(bucket, name));
      fs.rmSync(o.file, { force: true });
      return sendEmpty(res, 204);
    }
    if (req.method === 'PATCH') {
      let patch;
      try {
        patch = JSON.parse(body.toString('utf8') || '{}');
      } catch (e) {
        return sendError(res, 400, 'parseError', `Parse Error: ${e.message}`);
      }
      if (patch.metadata) o.metadata = Object.assign(o.metadata || {}, patch.metadata);
      if (patch.contentType) o.contentType = patch.contentType;
      o.metageneration += 1;
      o.updated = new Date().toISOString();
      return sendJSON(res, 200, resource(req, o));
    }
    return sendEmpty(res, 405);
  }

  // public objects, as https://storage.googleapis.com/BUCKET/NAME serves them
  m = /^\/([^/_][^/]*)\/(.+)$/.exec(p);
  if (m && (req.method === 'GET' || req.method === 'HEAD')) {
    const bucket = decodeURIComponent(m[1]);
    const name = decodeURIComponent(m[2]);
    const s = takeStatus('download');
    if (s) return sendInjected(res, s);
    if (FORBIDDEN.has(bucket)) {
      res.writeHead(403, { 'Content-Type': 'application/xml; charset=UTF-8' });
      return res.end(`<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code><Message>Access denied.</Message></Error>`);
    }
    const o = state.objects.get(objectKey(bucket, name));
    if (!o) {
      res.writeHead(404, { 'Content-Type': 'application/xml; charset=UTF-8' });
      return res.end(`<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>`);
    }
    return sendMedia(req, res, o);
  }
  return drainThen(req, () => sendError(res, 404, 'notFound', `Not Found: ${req.method} ${p}`));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://fake');
  if (url.pathname.startsWith('/_fake/')) {
    control(req, res, url.pathname).catch((e) => { console.error(e); res.destroy(); });
    return;
  }
  const record = { method: req.method, path: url.pathname, query: url.search.replace(/^\?/, ''), status: 0 };
  state.stats.requests.push(record);
  res.on('finish', () => { record.status = res.statusCode; });
  route(req, res, url, record).catch((e) => {
    console.error(e);
    if (!res.headersSent) sendError(res, 500, 'backendError', String(e && e.message));
    else res.destroy();
  });
});
server.requestTimeout = 0;
server.headersTimeout = 60000;
server.keepAliveTimeout = 30000;

reset();
server.listen(port, '127.0.0.1', () => console.log(`listening 127.0.0.1:${port}`));

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
