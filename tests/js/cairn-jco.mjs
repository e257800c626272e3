// Drives the cairn:core component, transpiled by jco, from Node.
//
//   node tests/js/cairn-jco.mjs <transpiled.js> <tasks.json>
//
// <transpiled.js> is the module `jco transpile` wrote (its directory needs a
// package.json with {"type":"module"} and @bytecodealliance/preview2-shim
// reachable from a node_modules above it). <tasks.json> is a JSON array of
// tasks; the results, one per task, are printed on stdout as one JSON object.
// Used by tests/tests/jco.rs, which checks the results against the cairn
// binary and the native core.
//
// Tasks:
//   {"op": "decode", "archive": PATH, "key": null | {"raw": HEX} | {"passphrase": S},
//    "out": PATH?, "slice": N?}
//       Pushes the archive in slices of N bytes (default 64 KiB), hashes the
//       plaintext (and writes it to `out`), then checks the trailer. With
//       "pull": true, reads the file N bytes at a time instead of whole, and
//       feeds each slice and pulls its plaintext one chunk per call: memory
//       stays at a slice plus a chunk whatever the archive decodes to
//       (the result gives `pulls`, `largestPull` and Node's `maxRssMiB`).
//   {"op": "encode", "input": PATH, "out": PATH, "params": {...}, "dest": DIR?,
//    "idRandom": HEX?}
//       Encodes `input` twice, streaming (push/finish, in slices that do not
//       line up with chunks) and chunk by chunk (preamble/encode-chunk/finale),
//       and writes the archive to `out`. With `dest`, also writes a cairn
//       destination (snapshots/<id>.db.*, catalog.json, latest.txt) with the
//       component's manifest functions, for `cairn restore`.
//   {"op": "sniff", "path": PATH}
//   {"op": "key-id", "key": HEX}

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [, , modulePath, tasksPath] = process.argv;
if (!modulePath || !tasksPath) {
  console.error('usage: node cairn-jco.mjs <transpiled.js> <tasks.json>');
  process.exit(2);
}
const { codec, manifest } = await import(pathToFileURL(modulePath).href);

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

// How an error from the component looks in JS: a `result` error is thrown as
// a ComponentError whose `payload` is the WIT `error` record; a trap (a guest
// panic) is a WebAssembly.RuntimeError.
function describeError(e) {
  if (e && Object.prototype.hasOwnProperty.call(e, 'payload')) {
    return {
      kind: e.constructor.name,
      code: e.payload.code,
      message: e.payload.message,
    };
  }
  if (e instanceof WebAssembly.RuntimeError) {
    return { kind: 'RuntimeError', message: e.message };
  }
  return { kind: e?.constructor?.name ?? typeof e, message: String(e) };
}

function keyOf(k) {
  if (!k) return { tag: 'none' };
  if (k.raw) return { tag: 'raw', val: unhex(k.raw) };
  return { tag: 'passphrase', val: k.passphrase };
}

// Plain JSON for the archive info (bigints become numbers: they are small).
function plainInfo(info) {
  return {
    ...info,
    createdAtMs: Number(info.createdAtMs),
    keyId: info.keyId ?? null,
  };
}

// The archive's bytes, `slice` at a time: all read at once for push, read
// slice by slice from the file for pull (bounded memory end to end).
function* slices(t, slice) {
  if (!t.pull) {
    const bytes = readFileSync(t.archive);
    for (let at = 0; at < bytes.length; at += slice) yield bytes.subarray(at, at + slice);
    return;
  }
  const fd = openSync(t.archive, 'r');
  const buf = Buffer.alloc(slice);
  try {
    for (let n; (n = readSync(fd, buf, 0, slice, null)) > 0; ) yield buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

function decode(t) {
  const slice = t.slice ?? 64 << 10;
  const dec = new codec.Decoder(keyOf(t.key));
  const hash = createHash('sha256');
  const out = t.out ? openSync(t.out, 'w') : null;
  let plainLen = 0;
  let pulls = 0;
  let largestPull = 0;
  const take = (plain) => {
    hash.update(plain);
    plainLen += plain.length;
    if (out !== null) writeSync(out, plain);
  };
  try {
    for (const part of slices(t, slice)) {
      if (!t.pull) {
        take(dec.push(part));
        continue;
      }
      dec.feed(part);
      for (let plain; (plain = dec.pull()) !== undefined; ) {
        pulls += 1;
        largestPull = Math.max(largestPull, plain.length);
        take(plain);
      }
    }
    const s = dec.finish();
    return {
      ok: true,
      pulls,
      largestPull,
      maxRssMiB: process.resourceUsage().maxRSS / 1024,
      sha256: hash.digest('hex'),
      plainLen,
      summary: {
        chunks: Number(s.chunks),
        plainLen: Number(s.plainLen),
        plainSha256: hex(s.plainSha256),
        info: plainInfo(s.info),
      },
    };
  } catch (e) {
    // Every error is final for a decoder: the next call gives it again.
    let again = null;
    try {
      dec.push(new Uint8Array(1));
    } catch (e2) {
      again = describeError(e2);
    }
    return { ok: false, error: describeError(e), plainLenBeforeError: plainLen, again };
  } finally {
    if (out !== null) closeSync(out);
    dec[Symbol.dispose]();
  }
}

function writerParams(p) {
  return {
    archiveId: unhex(p.archiveId),
    source: 'sqlite',
    dbName: p.dbName,
    createdAtMs: BigInt(p.createdAtMs),
    pageSize: p.pageSize,
    chunkSize: p.chunkSize,
    compressionLevel: p.level,
    codec: p.codec ?? 'deflate',
    encryption: p.key
      ? { masterKey: unhex(p.key), kdf: { tag: 'raw-key' }, salt: unhex(p.salt) }
      : undefined,
  };
}

function concat(parts) {
  return Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
}

// push/finish, fed in slices that straddle chunk boundaries.
function encodeStreaming(params, data) {
  const enc = codec.Encoder.create(params);
  try {
    const parts = [];
    const slice = Math.floor(params.chunkSize * 1.5) + 7;
    for (let at = 0; at < data.length; at += slice) {
      parts.push(enc.push(data.subarray(at, at + slice)));
    }
    const [tail, summary] = enc.finish();
    parts.push(tail);
    return { bytes: concat(parts), summary };
  } finally {
    enc[Symbol.dispose]();
  }
}

// preamble / encode-chunk / finale: what a host spreading chunks over
// several instances (workers) would call.
function encodeChunked(params, data) {
  const enc = codec.Encoder.create(params);
  try {
    const parts = [enc.preamble()];
    let n = 0n;
    for (let at = 0; at < data.length; at += params.chunkSize) {
      parts.push(enc.encodeChunk(n, data.subarray(at, at + params.chunkSize)));
      n += 1n;
    }
    const digest = createHash('sha256').update(data).digest();
    parts.push(enc.finale(n, BigInt(data.length), new Uint8Array(digest)));
    return concat(parts);
  } finally {
    enc[Symbol.dispose]();
  }
}

function encode(t) {
  const data = readFileSync(t.input);
  const params = writerParams(t.params);
  let streamed;
  try {
    streamed = encodeStreaming(params, data);
  } catch (e) {
    return { ok: false, error: describeError(e) };
  }
  const chunked = encodeChunked(params, data);
  const { bytes, summary } = streamed;
  mkdirSync(dirname(t.out), { recursive: true });
  writeFileSync(t.out, bytes);
  const result = {
    ok: true,
    storedLen: bytes.length,
    storedSha256: sha256(bytes),
    streamedEqualsChunked: Buffer.compare(bytes, chunked) === 0,
    summary: {
      chunks: Number(summary.chunks),
      plainLen: Number(summary.plainLen),
      plainSha256: hex(summary.plainSha256),
      storedLen: Number(summary.storedLen),
    },
  };
  if (t.dest) Object.assign(result, writeDestination(t, bytes, summary));
  return result;
}

// A destination `cairn restore` reads, built with the manifest interface:
// snapshots/<id>.db.gz or .db.cairn, catalog.json, latest.txt.
function writeDestination(t, bytes, summary) {
  // Decode what was just written: a round trip, and the archive's own
  // description of itself (compression, encryption, key id) for the entry.
  const dec = new codec.Decoder(t.params.key ? { tag: 'raw', val: unhex(t.params.key) } : { tag: 'none' });
  dec.push(bytes);
  const { info } = dec.finish();
  dec[Symbol.dispose]();

  const encrypted = Boolean(t.params.key);
  const id = manifest.snapshotId(BigInt(t.params.createdAtMs), unhex(t.idRandom ?? '00000000'));
  const object = manifest.snapshotObjectKey(id, encrypted);
  const entry = {
    id,
    object,
    createdAt: new Date(t.params.createdAtMs).toISOString(),
    createdAtMs: BigInt(t.params.createdAtMs),
    source: info.source,
    dbName: info.dbName,
    pageSize: info.pageSize,
    plainSize: summary.plainLen,
    // Left out of the catalog for encrypted backups (it would let anyone
    // confirm a guess of the contents).
    plainSha256: encrypted ? undefined : hex(summary.plainSha256),
    storedSize: BigInt(bytes.length),
    storedSha256: sha256(bytes),
    compression: info.compression,
    encryption: info.encryption,
    keyId: info.keyId,
    archiveId: info.archiveId,
  };
  const catalog = manifest.addEntry({ generation: 0n, entries: [] }, entry);
  mkdirSync(join(t.dest, dirname(object)), { recursive: true });
  writeFileSync(join(t.dest, object), bytes);
  writeFileSync(join(t.dest, 'catalog.json'), manifest.renderCatalog(catalog));
  writeFileSync(join(t.dest, 'latest.txt'), manifest.latestPointer(entry));
  return { id, object };
}

function run(t) {
  switch (t.op) {
    case 'decode':
      return decode(t);
    case 'encode':
      return encode(t);
    case 'sniff':
      return { ok: true, kind: codec.sniff(readFileSync(t.path).subarray(0, 16)) };
    case 'key-id':
      try {
        return { ok: true, keyId: codec.keyId(unhex(t.key)) };
      } catch (e) {
        return { ok: false, error: describeError(e) };
      }
    default:
      throw new Error(`unknown task ${JSON.stringify(t.op)}`);
  }
}

const tasks = JSON.parse(readFileSync(tasksPath, 'utf8'));
const results = [];
for (const t of tasks) {
  try {
    results.push(run(t));
  } catch (e) {
    // Anything not handled above (a trap, a bug in this script) is reported,
    // not thrown, so the Rust side shows it next to the task.
    results.push({ ok: false, unexpected: true, error: describeError(e), stack: e?.stack ?? null });
  }
}
process.stdout.write(`${JSON.stringify({ node: process.version, results })}\n`);
