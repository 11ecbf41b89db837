// Eddy guest layer for JavaScript plugins (QuickJS through componentize-qjs).
//
// A plugin is an ES module that defines a class with `init(config)` and `process(event)` (and,
// optionally, `processBroadcast`, `planLookups`, `visit`, `migrate`) and exports the WIT
// interfaces with:
//
//     export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } =
//         exportPlugin(MyPlugin);
//
// Everything here mirrors the Rust SDK (guest-sdk/src): the same state encoding (values are
// compact JSON in UTF-8, map keys per key type), the same defaults for the optional exports and
// the same error texts, so plugins in either language share state and behave alike.
//
// Value conventions of the QuickJS bindings: `option` none is `null`, u64 is a Number (exact up
// to 2^53), `list<u8>` arrives as a Uint8Array, a `result` error of an import is thrown as an
// Error whose `payload` is the WIT error variant (`{tag, val}`).

import keyedState from "eddy:plugin/keyed-state@0.2.2";
import broadcastState from "eddy:plugin/broadcast-state@0.2.2";
import lookupApi from "eddy:plugin/lookup@0.2.2";
import logApi from "eddy:plugin/log@0.2.2";
import clockApi from "eddy:plugin/clock@0.2.2";

// ------------------------------------------------------------------------------------------
// UTF-8 and JSON (QuickJS has neither TextEncoder nor TextDecoder)

// QuickJS has no TextEncoder/TextDecoder, and a byte-at-a-time loop in JS costs ~0.2 µs a byte
// (most of a plugin's time, measured). So both directions go through native built-ins: a
// "binary string" (one char per byte, 0-255) is made from bytes with toBase64 + atob and
// turned into bytes with btoa + Uint8Array.fromBase64; UTF-8 comes from encodeURIComponent
// (+ unescape) and goes back with escape (+ decodeURIComponent). Whatever those cannot take
// (lone surrogates, invalid UTF-8) falls back to the exact loops below.

// Whether text is all ASCII (then it is its own UTF-8): anchored at both ends, QuickJS's regex
// engine walks the text once without trying a match at every position (6.8-7.2 µs on a
// 382-character output against 8.4 for a search for the first non-ASCII character).
const ALL_ASCII = /^[\x00-\x7f]*$/;

/** The bytes of a binary string (every char below 256). */
function binaryToBytes(bin) {
  return Uint8Array.fromBase64(btoa(bin));
}

/** The binary string of bytes (one char per byte): through base64, twice as fast as
 * String.fromCharCode.apply on a 70-byte value (0.8 against 1.6 µs, measured). */
function bytesToBinary(bytes) {
  return atob((bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes)).toBase64());
}

/** The UTF-8 bytes of a string (lone surrogates become U+FFFD). */
export function utf8Encode(text) {
  if (ALL_ASCII.test(text)) return binaryToBytes(text);
  let bin;
  try {
    bin = unescape(encodeURIComponent(text));
  } catch {
    return utf8EncodeLoop(text); // a lone surrogate: encodeURIComponent throws a URIError
  }
  return binaryToBytes(bin);
}

function utf8EncodeLoop(text) {
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      out.push(c);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x800) {
      out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    } else if (c < 0x10000) {
      out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    } else {
      out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
  }
  return new Uint8Array(out);
}

/** Decodes UTF-8 bytes. With `strict`, invalid UTF-8 throws; otherwise it becomes U+FFFD. */
export function utf8Decode(bytes, strict = false) {
  const bin = bytesToBinary(bytes);
  if (ALL_ASCII.test(bin)) return bin;
  let text;
  try {
    text = decodeURIComponent(escape(bin));
  } catch {
    return utf8DecodeLoop(bytes, strict); // invalid UTF-8: the loop says where, or replaces
  }
  // Only valid UTF-8 round-trips exactly; anything decodeURIComponent let through that is not
  // (should there be such) goes to the loop too.
  let back;
  try {
    back = unescape(encodeURIComponent(text));
  } catch {
    back = null;
  }
  return back === bin ? text : utf8DecodeLoop(bytes, strict);
}

function utf8DecodeLoop(bytes, strict) {
  let s = "";
  let units = [];
  const flush = () => {
    s += String.fromCharCode.apply(null, units);
    units = [];
  };
  const bad = (i) => {
    if (strict) throw new Error(`invalid UTF-8 at byte ${i}`);
    units.push(0xfffd);
  };
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let need = 0;
    let cp = 0;
    let min = 0;
    if (b < 0x80) {
      units.push(b);
      i++;
      if (units.length > 4096) flush();
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      need = 1; cp = b & 0x1f; min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2; cp = b & 0x0f; min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3; cp = b & 0x07; min = 0x10000;
    } else {
      bad(i);
      i++;
      continue;
    }
    let j = 1;
    for (; j <= need && i + j < bytes.length; j++) {
      const c = bytes[i + j];
      if ((c & 0xc0) !== 0x80) break;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (j <= need || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      bad(i);
      i += Math.max(1, j);
      continue;
    }
    if (cp >= 0x10000) {
      cp -= 0x10000;
      units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
    } else {
      units.push(cp);
    }
    i += need + 1;
    if (units.length > 4096) flush();
  }
  flush();
  return s;
}

/**
 * The value of bytes that spell a JSON integer of at most 15 digits (exact in a double), or
 * undefined for anything else (which JSON.parse then reads, or rejects). Counters, amounts and
 * timestamps are most of the values in state; reading one this way costs ~1 µs instead of
 * ~4.8 µs through text and JSON.parse (measured in QuickJS).
 */
function smallInt(bytes) {
  const n = bytes.length;
  let i = bytes[0] === 0x2d ? 1 : 0; // '-'
  if (n === i || n - i > 15 || (bytes[i] === 0x30 && n - i > 1)) return undefined; // '0' leads
  let v = 0;
  for (; i < n; i++) {
    const d = bytes[i] - 0x30;
    if (d < 0 || d > 9) return undefined;
    v = v * 10 + d;
  }
  return bytes[0] === 0x2d ? -v : v;
}

/** Parses JSON from UTF-8 bytes (or a string). Throws a SyntaxError on bad input. */
export function parseJson(bytes) {
  if (typeof bytes === "string") return JSON.parse(bytes);
  const v = smallInt(bytes);
  return v !== undefined ? v : JSON.parse(utf8Decode(bytes, true));
}

/** The compact JSON encoding of a value, as UTF-8 bytes: the shared state encoding. */
export function jsonBytes(value) {
  // An integer's text is ASCII: no need to look for other characters.
  if (Number.isSafeInteger(value)) return binaryToBytes(String(value));
  const text = JSON.stringify(value);
  if (text === undefined) throw new Error("value has no JSON form");
  return utf8Encode(text);
}

/** Whether `v` is a JSON integer that fits a u64 (exactly representable: up to 2^53). */
export function isU64(v) {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

/** Whether `v` is a plain JSON object (not an array, not null). */
export function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Throws if `obj` has a member not in `allowed` (like serde's `deny_unknown_fields`). */
export function denyUnknownFields(obj, allowed) {
  if (!isObject(obj)) throw new Error(`invalid type: ${JSON.stringify(obj)}, expected an object`);
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      throw new Error(`unknown field \`${k}\`, expected one of ${allowed.map((a) => `\`${a}\``).join(", ")}`);
    }
  }
}

function toBytes(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (typeof payload === "string") return utf8Encode(payload);
  if (Array.isArray(payload)) return new Uint8Array(payload);
  throw new TypeError("a payload is a Uint8Array, a string or an array of bytes");
}

// ------------------------------------------------------------------------------------------
// Log and clock

function logAt(level) {
  return (message) => logApi.log(level, String(message));
}

/** Writes into the host's log: `log.info("flagged " + id)`. */
export const log = {
  trace: logAt("trace"),
  debug: logAt("debug"),
  info: logAt("info"),
  warn: logAt("warn"),
  error: logAt("error"),
};

/** The host's processing-time clock (the clock of state TTL), ms since the Unix epoch. */
export function nowMs() {
  return clockApi.nowMs();
}

// ------------------------------------------------------------------------------------------
// Events, outputs, outcomes

/** One input event. `key` and `payload` are Uint8Arrays. */
export class Event {
  constructor(wit) {
    this.key = wit.key;
    this.subject = wit.subject;
    this.headers = wit.headers;
    this.payload = wit.payload;
    this.timestampMs = wit.timestampMs;
    this.sequence = wit.sequence;
  }
  /** The key as text (UTF-8, invalid bytes replaced). */
  keyText() {
    return utf8Decode(this.key);
  }
  /** The payload as text. */
  text() {
    return utf8Decode(this.payload);
  }
  /** The payload parsed as JSON; throws on invalid JSON. */
  json() {
    return parseJson(this.payload);
  }
  /** The first header called `name`, or null. */
  header(name) {
    const h = this.headers.find(([n]) => n === name);
    return h ? h[1] : null;
  }
}

/** One event of a broadcast input; `input` is the broadcast input's name. */
export class BroadcastEvent extends Event {
  constructor(wit) {
    super({ ...wit, key: new Uint8Array(0) });
    this.input = wit.input;
  }
}

// Output and Outcome keep their fields private; their static blocks hand these two readers to
// lowerOutcome, the one place outside the classes that reads them.
let outputToWit;
let outcomeToWit;
// Outcomes are built by Outcome's static functions only; its constructor asks for this token.
const OUTCOME = Symbol("Outcome");

/** A message to publish: `new Output(payload).subject("x").header("A", "1")`. */
export class Output {
  #payload;
  #subject = null;
  #headers = [];

  /** `payload`: a Uint8Array, a string (sent as UTF-8) or an array of bytes. */
  constructor(payload) {
    this.#payload = toBytes(payload);
  }
  /** An output whose payload is the compact JSON of `value`. */
  static json(value) {
    return new Output(jsonBytes(value));
  }
  /** Publishes to `subject` instead of the pipeline's default output subject. */
  subject(subject) {
    this.#subject = subject;
    return this;
  }
  /** Adds a header (a name may repeat). */
  header(name, value) {
    this.#headers.push([String(name), String(value)]);
    return this;
  }

  static {
    outputToWit = (o) => ({ subject: o.#subject, headers: o.#headers, payload: o.#payload });
  }
}

/** What became of an event. Build with the static functions. */
export class Outcome {
  #tag;
  #val;

  constructor(token, tag, val) {
    if (token !== OUTCOME) {
      throw new TypeError("build an Outcome with Outcome.emit, emitOne, emitJson, drop or reject");
    }
    this.#tag = tag;
    this.#val = val;
  }
  /** Publish these outputs (possibly none). */
  static emit(outputs) {
    return new Outcome(OUTCOME, "emit", Array.from(outputs));
  }
  /** Publish one output. */
  static emitOne(output) {
    return new Outcome(OUTCOME, "emit", [output]);
  }
  /** Publish the compact JSON of `value` to the default subject. */
  static emitJson(value) {
    try {
      return Outcome.emitOne(Output.json(value));
    } catch (e) {
      return Outcome.reject(`cannot encode output as JSON: ${e.message}`);
    }
  }
  /** Filter the event out on purpose. */
  static drop() {
    return new Outcome(OUTCOME, "drop");
  }
  /** Send the event to the dead-letter subject with this reason. */
  static reject(reason) {
    return new Outcome(OUTCOME, "reject", String(reason));
  }

  static {
    outcomeToWit = (o) => {
      if (o.#tag === "drop") return { tag: "drop" };
      if (o.#tag === "reject") return { tag: "reject", val: o.#val };
      if (!o.#val.every((out) => out instanceof Output)) {
        return { tag: "reject", val: "plugin emitted something that is not an Output" };
      }
      return { tag: "emit", val: o.#val.map(outputToWit) };
    };
  }
}

function lowerOutcome(o) {
  if (o instanceof Output) o = Outcome.emitOne(o);
  if (!(o instanceof Outcome)) {
    return { tag: "reject", val: "plugin returned something that is not an Outcome" };
  }
  return outcomeToWit(o);
}

// ------------------------------------------------------------------------------------------
// Keyed state

/** Why a state call failed. `kind` is the host's error (or "decode"/"encode"). */
export class StateError extends Error {
  constructor(kind, detail) {
    super(StateError.describe(kind, detail));
    this.name = "StateError";
    this.kind = kind;
    this.detail = detail;
  }
  static describe(kind, m) {
    switch (kind) {
      case "unknown-state": return "state is not open in this plugin instance";
      case "wrong-kind": return `state exists with another kind: ${m}`;
      case "no-such-event": return "no event is being processed: keyed state is only reachable from `process`";
      case "read-only": return `state is read-only here: ${m}`;
      case "storage": return `state storage failed: ${m}`;
      default: return String(m);
    }
  }
}

/** Runs a host call, turning a thrown WIT error into `wrap(tag, val)`. */
function hostCall(wrap, f) {
  try {
    return f();
  } catch (e) {
    if (e && e.payload && typeof e.payload.tag === "string") throw wrap(e.payload.tag, e.payload.val);
    throw e;
  }
}
const stateCall = (f) => hostCall((tag, val) => new StateError(tag, val), f);

// Index of the event being processed in the current batch, or null.
let currentEvent = null;
// Broadcast reads of the keyed batch being handled (string and number keys): broadcast maps
// change only between keyed batches, so a key is asked of the host once per batch, as in the
// Rust SDK. Bytes are kept, not decoded values, so a plugin that changes a value it read
// cannot change what the next event reads.
const batchReads = new Map();

/**
 * Time-to-live of a state's entries (Flink's StateTtlConfig): entries expire `ms` after their
 * last write; `updateOnRead` makes reads stamp them too; `returnExpired` may return an expired
 * entry not cleaned up yet (once). The pipeline's configuration may override it.
 */
export function ttl(ms, { updateOnRead = false, returnExpired = false } = {}) {
  return { ttlMs: ms, updateOnRead, returnExpired };
}

/** Map key encodings: the same bytes as the Rust SDK's `MapKey`, so order is natural order. */
export const KeyTypes = {
  string: {
    encode: (k) => utf8Encode(String(k)),
    decode: (b) => utf8Decode(b, true),
  },
  bytes: {
    encode: (k) => toBytes(k),
    decode: (b) => b,
  },
  u32: fixedInt(4, false),
  u64: fixedInt(8, false),
  i32: fixedInt(4, true),
  i64: fixedInt(8, true),
};

function fixedInt(width, signed) {
  const bits = BigInt(width * 8);
  const flip = signed ? 1n << (bits - 1n) : 0n;
  const mask = (1n << bits) - 1n;
  const name = `${signed ? "i" : "u"}${width * 8}`;
  return {
    encode(k) {
      let v = BigInt(k);
      const lo = signed ? -(1n << (bits - 1n)) : 0n;
      const hi = signed ? (1n << (bits - 1n)) - 1n : mask;
      if (v < lo || v > hi) throw new RangeError(`${k} is not a ${name}`);
      v = (v & mask) ^ flip;
      const out = new Uint8Array(width);
      for (let i = width - 1; i >= 0; i--) {
        out[i] = Number(v & 0xffn);
        v >>= 8n;
      }
      return out;
    },
    decode(b) {
      if (b.length !== width) throw new Error(`a ${name} key is ${width} bytes, this one is ${b.length}`);
      let v = 0n;
      for (const x of b) v = (v << 8n) | BigInt(x);
      v ^= flip;
      if (signed && v >= 1n << (bits - 1n)) v -= 1n << bits;
      return Number.isSafeInteger(Number(v)) ? Number(v) : v;
    },
  };
}

function keyType(t) {
  if (typeof t === "string") {
    if (!KeyTypes[t]) throw new Error(`unknown key type ${t}`);
    return KeyTypes[t];
  }
  return t; // a custom {encode, decode}
}

/**
 * The [key, value] byte pairs of a map, fetched from the host `pageSize` at a time as the
 * iteration advances: `fetch(after, pageSize)` returns the page after key `after` (null: the
 * first page).
 */
function* pages(fetch, pageSize) {
  let after = null;
  for (;;) {
    const page = fetch(after, pageSize);
    yield* page;
    if (page.length < pageSize) return;
    after = page[page.length - 1][0];
  }
}

/** `f` of each item of `items`, lazily. */
function* mapItems(items, f) {
  for (const item of items) yield f(item);
}

/** A keyed state's name, kind and TTL, its host id once opened, and its value encoding. */
class Slot {
  constructor(name, kind, options) {
    this.name = name;
    this.kind = kind;
    this.ttl = (options && options.ttl) || null;
    this.id = null;
  }
  /** The state's host id, opening it on first use. */
  open() {
    if (this.id === null) {
      const t = this.ttl;
      const wit = t && {
        ttlMs: t.ttlMs,
        update: t.updateOnRead ? "on-read-and-write" : "on-create-and-write",
        visibility: t.returnExpired ? "return-expired-if-not-cleaned-up" : "never-return-expired",
      };
      this.id = stateCall(() => keyedState.open(this.name, this.kind, wit));
    }
    return this.id;
  }
  /** The state's host id for a keyed call, which needs an event being processed. */
  target() {
    if (currentEvent === null) throw new StateError("no-such-event");
    return this.open();
  }
  encode(value) {
    try {
      return jsonBytes(value);
    } catch (e) {
      throw new StateError("encode", `cannot encode a value of state \`${this.name}\`: ${e.message}`);
    }
  }
  decode(bytes) {
    try {
      return parseJson(bytes);
    } catch (e) {
      throw new StateError("decode", `cannot decode a value of state \`${this.name}\`: ${e.message}`);
    }
  }
}

/**
 * What the three keyed-state handles share. Each subclass keeps the same Slot in its own
 * `#slot` too: a class's private fields are not visible to its subclasses.
 */
class StateHandle {
  #slot;

  constructor(slot) {
    this.#slot = slot;
  }
  /** The state's name. */
  get name() {
    return this.#slot.name;
  }
  /** The state's time-to-live (from `ttl(...)`), or null. */
  get ttl() {
    return this.#slot.ttl;
  }
  /** Opens the state in the host now (it is opened on first use otherwise). */
  open() {
    this.#slot.open();
  }
  /** Asks the host to visit every key of this state (from processBroadcast or migrate). */
  visitAllKeys(tag) {
    const id = this.#slot.open();
    stateCall(() => keyedState.visitAllKeys(id, tag));
  }
}

/** One JSON value per key (Flink ValueState). Options: `{ttl: ttl(ms)}`. */
export class ValueState extends StateHandle {
  #slot;

  constructor(name, options) {
    const slot = new Slot(name, "value", options);
    super(slot);
    this.#slot = slot;
  }
  /** The value of the current event's key, or null. */
  get() {
    const slot = this.#slot;
    const id = slot.target();
    const bytes = stateCall(() => keyedState.valueGet(id, currentEvent));
    return bytes === null ? null : slot.decode(bytes);
  }
  set(value) {
    const id = this.#slot.target();
    const bytes = this.#slot.encode(value);
    stateCall(() => keyedState.valueSet(id, currentEvent, bytes));
  }
  /** Sets the value with its own time-to-live (wins over the state's TTL for this entry). */
  setWithTtl(value, ttlMs) {
    const id = this.#slot.target();
    const bytes = this.#slot.encode(value);
    stateCall(() => keyedState.valueSetWithTtl(id, currentEvent, bytes, ttlMs));
  }
  /** Reads, applies `f(valueOrNull)`, writes and returns the result. */
  update(f) {
    const next = f(this.get());
    this.set(next);
    return next;
  }
  clear() {
    const id = this.#slot.target();
    stateCall(() => keyedState.valueClear(id, currentEvent));
  }
}

/**
 * Entries key → JSON value per key, ordered by key bytes, with a Map's methods (each acting on
 * the current event's key). Options: `{keyType, ttl}`.
 */
export class MapState extends StateHandle {
  #slot;
  #keys;

  constructor(name, options = {}) {
    const slot = new Slot(name, "map", options);
    super(slot);
    this.#slot = slot;
    this.#keys = keyType(options.keyType || "string");
  }
  #encodeKey(key) {
    try {
      return this.#keys.encode(key);
    } catch (e) {
      throw new StateError("encode", `cannot encode a key of state \`${this.#slot.name}\`: ${e.message}`);
    }
  }
  #decodeKey(bytes) {
    try {
      return this.#keys.decode(bytes);
    } catch (e) {
      throw new StateError("decode", `cannot decode a key of state \`${this.#slot.name}\`: ${e.message}`);
    }
  }
  /** The value of entry `key`, or null. */
  get(key) {
    const slot = this.#slot;
    const id = slot.target();
    const bytes = stateCall(() => keyedState.mapGet(id, currentEvent, this.#encodeKey(key)));
    return bytes === null ? null : slot.decode(bytes);
  }
  /** Sets entry `key`; returns the map. */
  set(key, value) {
    const id = this.#slot.target();
    const k = this.#encodeKey(key);
    const v = this.#slot.encode(value);
    stateCall(() => keyedState.mapPut(id, currentEvent, k, v));
    return this;
  }
  /** Sets entry `key` with its own time-to-live (wins over the state's TTL); returns the map. */
  setWithTtl(key, value, ttlMs) {
    const id = this.#slot.target();
    const k = this.#encodeKey(key);
    const v = this.#slot.encode(value);
    stateCall(() => keyedState.mapPutWithTtl(id, currentEvent, k, v, ttlMs));
    return this;
  }
  /** Whether entry `key` exists. Counts as a read for TTL. */
  has(key) {
    const id = this.#slot.target();
    return stateCall(() => keyedState.mapContains(id, currentEvent, this.#encodeKey(key)));
  }
  /** Removes entry `key` (nothing happens if it is absent). */
  delete(key) {
    const id = this.#slot.target();
    stateCall(() => keyedState.mapRemove(id, currentEvent, this.#encodeKey(key)));
  }
  isEmpty() {
    const id = this.#slot.target();
    return stateCall(() => keyedState.mapIsEmpty(id, currentEvent));
  }
  clear() {
    const id = this.#slot.target();
    stateCall(() => keyedState.mapClear(id, currentEvent));
  }
  /** The current event's entries in key order, fetched from the host in pages. */
  #raw(pageSize) {
    const id = this.#slot.target();
    const event = currentEvent;
    return pages((after, n) => stateCall(() => keyedState.mapEntries(id, event, after, n)), pageSize);
  }
  /** An iterator of [key, value] pairs in key order, fetched from the host `pageSize` at a time. */
  entries(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([k, v]) => [this.#decodeKey(k), this.#slot.decode(v)]);
  }
  /** An iterator of the keys in key order (values are not decoded). */
  keys(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([k]) => this.#decodeKey(k));
  }
  /** An iterator of the values in key order. */
  values(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([, v]) => this.#slot.decode(v));
  }
  [Symbol.iterator]() {
    return this.entries();
  }
}

/** A list of JSON values per key, oldest first (Flink ListState). Options: `{ttl}`. */
export class ListState extends StateHandle {
  #slot;

  constructor(name, options) {
    const slot = new Slot(name, "list", options);
    super(slot);
    this.#slot = slot;
  }
  /** Every element (an empty array when there is none). */
  get() {
    const slot = this.#slot;
    const id = slot.target();
    return stateCall(() => keyedState.listGet(id, currentEvent)).map((b) => slot.decode(b));
  }
  add(value) {
    const id = this.#slot.target();
    const v = this.#slot.encode(value);
    stateCall(() => keyedState.listAdd(id, currentEvent, v));
  }
  /** Appends every element of an iterable, in order. */
  addAll(values) {
    const id = this.#slot.target();
    const vs = Array.from(values, (v) => this.#slot.encode(v));
    stateCall(() => keyedState.listAddAll(id, currentEvent, vs));
  }
  /** Replaces the whole list with the elements of an iterable. */
  update(values) {
    const id = this.#slot.target();
    const vs = Array.from(values, (v) => this.#slot.encode(v));
    stateCall(() => keyedState.listUpdate(id, currentEvent, vs));
  }
  clear() {
    const id = this.#slot.target();
    stateCall(() => keyedState.listClear(id, currentEvent));
  }
  [Symbol.iterator]() {
    return this.get()[Symbol.iterator]();
  }
}

// ------------------------------------------------------------------------------------------
// Broadcast state

/** Why a broadcast state call failed. */
export class BroadcastError extends Error {
  constructor(kind, m) {
    super(
      kind === "unknown-map" ? "broadcast map is not open"
        : kind === "read-only" ? `broadcast state is read-only here: ${m}`
        : kind === "storage" ? `broadcast storage failed: ${m}`
        : String(m),
    );
    this.name = "BroadcastError";
    this.kind = kind;
  }
}
const broadcastCall = (f) => hostCall((tag, val) => new BroadcastError(tag, val), f);

/**
 * A named map shared by every key, written only from `processBroadcast`, with a Map's
 * methods. Values are JSON, keys encoded as for MapState. Options: `{keyType}` (default
 * "string").
 */
export class BroadcastMap {
  #name;
  #keys;
  #id = null;

  constructor(name, options = {}) {
    this.#name = name;
    this.#keys = keyType(options.keyType || "string");
  }
  /** The map's name. */
  get name() {
    return this.#name;
  }
  /** Opens the map in the host now (it is opened on first use otherwise). */
  open() {
    if (this.#id === null) this.#id = broadcastCall(() => broadcastState.openMap(this.#name));
    return this.#id;
  }
  #decode(bytes) {
    try {
      return parseJson(bytes);
    } catch (e) {
      throw new BroadcastError("decode", `cannot decode a value of broadcast map \`${this.#name}\`: ${e.message}`);
    }
  }
  /** The bytes at `key`, or null; within a keyed batch a string or number key is read once. */
  #read(key) {
    const id = this.open();
    const memo = currentEvent !== null && (typeof key === "string" || typeof key === "number")
      ? `${id}|${typeof key}|${key}` : null;
    let bytes = memo === null ? undefined : batchReads.get(memo);
    if (bytes === undefined) {
      bytes = broadcastCall(() => broadcastState.get(id, this.#keys.encode(key)));
      if (memo !== null) batchReads.set(memo, bytes);
    }
    return bytes;
  }
  /** The value at `key`, or null. */
  get(key) {
    const bytes = this.#read(key);
    return bytes === null ? null : this.#decode(bytes);
  }
  /** Whether the map has an entry at `key`. */
  has(key) {
    return this.#read(key) !== null;
  }
  /** Sets the entry at `key` (only in processBroadcast); returns the map. */
  set(key, value) {
    const id = this.open();
    broadcastCall(() => broadcastState.put(id, this.#keys.encode(key), jsonBytes(value)));
    return this;
  }
  /** Removes the entry at `key` (only in processBroadcast). */
  delete(key) {
    const id = this.open();
    broadcastCall(() => broadcastState.remove(id, this.#keys.encode(key)));
  }
  /** Removes every entry (only in processBroadcast). */
  clear() {
    const id = this.open();
    broadcastCall(() => broadcastState.clear(id));
  }
  #raw(pageSize) {
    const id = this.open();
    return pages((after, n) => broadcastCall(() => broadcastState.entries(id, after, n)), pageSize);
  }
  /** An iterator of [key, value] pairs in key order, fetched from the host `pageSize` at a time. */
  entries(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([k, v]) => [this.#keys.decode(k), this.#decode(v)]);
  }
  /** An iterator of the keys in key order. */
  keys(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([k]) => this.#keys.decode(k));
  }
  /** An iterator of the values in key order. */
  values(pageSize = 256) {
    return mapItems(this.#raw(pageSize), ([, v]) => this.#decode(v));
  }
  [Symbol.iterator]() {
    return this.entries();
  }
}

// ------------------------------------------------------------------------------------------
// Lookups

/** Why a lookup failed. */
export class LookupError extends Error {
  constructor(kind, m) {
    super(
      kind === "unknown-store" ? `unknown lookup store: ${m}`
        : kind === "failed" ? `lookup failed: ${m}`
        : String(m),
    );
    this.name = "LookupError";
    this.kind = kind;
  }
}
const lookupCall = (f) => hostCall((tag, val) => new LookupError(tag, val), f);

/** A lookup store the pipeline declares as `[lookup.<name>]`. */
export class LookupStore {
  #name;

  constructor(name) {
    this.#name = name;
  }
  /** The store's name. */
  get name() {
    return this.#name;
  }
  /** A request for `planLookups`. */
  request(key) {
    return { store: this.#name, key: String(key) };
  }
  /** The value's bytes, or null if the store has no such key. Throws a LookupError. */
  get(key) {
    return lookupCall(() => lookupApi.get(this.#name, key));
  }
  /** The value parsed as JSON, or null. */
  getJson(key) {
    const bytes = this.get(key);
    if (bytes === null) return null;
    try {
      return parseJson(bytes);
    } catch (e) {
      throw new LookupError("decode", `value of \`${key}\` in store \`${this.#name}\` is not the JSON expected: ${e.message}`);
    }
  }
  /** One `{ok: bytes|null}` or `{err: LookupError}` per key, in order. */
  getMany(keys) {
    return lookupApi.getMany(this.#name, Array.from(keys)).map((r) =>
      r.tag === "ok" ? { ok: r.val } : { err: new LookupError(r.val.tag, r.val.val) },
    );
  }
}

// ------------------------------------------------------------------------------------------
// Exporting a plugin

/** The reason every event is rejected with when `init` has not succeeded (as in Rust). */
export const NOT_INITIALISED = "plugin not initialised";
/** The reason broadcast events are rejected with by a plugin without `processBroadcast`. */
export const NO_BROADCAST =
  "this plugin does not handle broadcast events: give the plugin class a processBroadcast(event) method, or remove the pipeline's [broadcast] inputs";

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * ` (at index.js:12)`: the innermost place in the plugin's own code (not this module) on an
 * error's stack, or "" when the stack names none.
 */
function where(e) {
  if (!(e instanceof Error) || typeof e.stack !== "string") return "";
  for (const frame of e.stack.split("\n")) {
    const m = /([^\s()@]+?):(\d+)(?::\d+)?\)?\s*$/.exec(frame);
    if (m && !m[1].endsWith("eddy.js")) return ` (at ${m[1].split("/").pop()}:${m[2]})`;
  }
  return "";
}

/**
 * Turns a plugin class into the WIT exports. The class is instantiated with no arguments and
 * `init(config)` is called with the parsed configuration object (`{}` when none is set); a
 * throw from `init` stops the pipeline with its message.
 */
export function exportPlugin(PluginClass) {
  let plugin = null;

  const handler = {
    init(configText) {
      plugin = null;
      let config;
      try {
        config = configText.trim() === "" ? {} : JSON.parse(configText);
      } catch (e) {
        throw `invalid plugin config: ${message(e)}`;
      }
      const p = new PluginClass();
      try {
        if (p.init) p.init(config);
      } catch (e) {
        throw message(e);
      }
      plugin = p;
    },
    handle(events) {
      if (plugin === null) return events.map(() => ({ tag: "reject", val: NOT_INITIALISED }));
      const outcomes = new Array(events.length);
      try {
        for (let i = 0; i < events.length; i++) {
          currentEvent = i;
          let outcome;
          try {
            outcome = plugin.process(new Event(events[i]));
          } catch (e) {
            // A throw rejects the event rather than trapping the whole instance.
            outcome = Outcome.reject(`uncaught exception: ${message(e)}${where(e)}`);
          }
          outcomes[i] = lowerOutcome(outcome);
        }
      } finally {
        currentEvent = null;
        batchReads.clear();
      }
      return outcomes;
    },
  };

  const broadcastHandler = {
    handleBroadcast(events) {
      if (plugin === null) return events.map(() => ({ tag: "err", val: NOT_INITIALISED }));
      return events.map((e) => {
        if (!plugin.processBroadcast) return { tag: "err", val: NO_BROADCAST };
        try {
          plugin.processBroadcast(new BroadcastEvent(e));
          return { tag: "ok" };
        } catch (err) {
          return { tag: "err", val: message(err) };
        }
      });
    },
  };

  const lookupPlanner = {
    prepare(events) {
      if (plugin === null || !plugin.planLookups) return events.map(() => []);
      return events.map((e) => plugin.planLookups(new Event(e)) || []);
    },
  };

  const keyedVisitor = {
    visit(tag, state, entries) {
      if (plugin === null || !plugin.visit) return entries.map(() => ({ tag: "keep" }));
      // `entry`: {key, mapKey (or null), value}; return "keep", "remove" or {set: value}.
      return entries.map((entry) => {
        const action = plugin.visit(tag, state, entry);
        if (action === "remove") return { tag: "remove" };
        if (action && action.set !== undefined) return { tag: "set", val: toBytes(action.set) };
        return { tag: "keep" };
      });
    },
  };

  const migrator = {
    migrate(previousVersion) {
      if (plugin === null) throw NOT_INITIALISED;
      if (!plugin.migrate) return;
      try {
        plugin.migrate(previousVersion);
      } catch (e) {
        throw message(e);
      }
    },
  };

  return { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator };
}
