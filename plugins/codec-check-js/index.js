// codec-check, in JavaScript: a test plugin that checks the layer's JSON and UTF-8 code inside
// QuickJS itself (the engine plugins run in, whose built-ins the layer leans on), against
// references written here the slow, obvious way. Each event {"part": P, "n": N} runs N cases
// of one part ("ints", "numbers", "strings", "invalid", "large"; small enough parts to stay
// within the CPU budget of an event) and emits {"checked": N, "failures": [...]} (at most 20
// failures, each saying what differed). tests/tests/languages.rs runs it under `eddy test`
// and expects no failure.
//
// Checked: integers written and read back through the shortcut (jsonBytes/parseJson) against
// JSON.stringify/JSON.parse; short byte strings that look like numbers (leading zeros, signs,
// exponents, spaces, 15 and 16 digits) read as JSON.parse reads them or rejected alike;
// random strings (ASCII, Latin-1, other BMP, astral, lone surrogates) encoded to UTF-8 against
// a reference encoder and decoded back; invalid UTF-8 rejected in strict mode; 256 KB texts.

import { Outcome, Output, exportPlugin, jsonBytes, parseJson, utf8Decode, utf8Encode } from "eddy-sdk";

// A small deterministic generator (xorshift32), so a failure can be replayed.
let seed = 0x9e3779b9;
function rand(n) {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
}

/** UTF-8 of a string, one code point at a time (lone surrogates become U+FFFD). */
function referenceUtf8(text) {
  const out = [];
  for (const ch of text) {
    let c = ch.codePointAt(0);
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}

const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const show = (v) => (Object.is(v, -0) ? "-0" : typeof v === "string" ? JSON.stringify(v) : String(v));

function outcomeOf(f) {
  try {
    return { value: f() };
  } catch (e) {
    return { error: e instanceof Error ? "rejected" : String(e) };
  }
}

const EDGE_INTS = [
  0,
  -0,
  1,
  -1,
  9,
  10,
  999999999999999,
  -999999999999999,
  1e15,
  -1e15,
  Number.MAX_SAFE_INTEGER,
  -Number.MAX_SAFE_INTEGER,
  2 ** 53,
  2 ** 60,
  1e21,
];

function check(part, count) {
  const failures = [];
  let checked = 0;
  const fail = (what) => {
    if (failures.length < 20) failures.push(what);
  };
  const parts = { ints, numbers, strings, invalid, large };
  if (!parts[part]) return { checked, failures: [`unknown part ${part}`] };
  parts[part]();
  return { checked, failures };

  // Integers, of every length, both signs, and the edges of exact doubles.
  function ints() {
    const ints = [...EDGE_INTS];
    for (let i = 0; i < count; i++) {
      const digits = 1 + rand(16);
      let v = 0;
      for (let d = 0; d < digits; d++) v = v * 10 + rand(10);
      ints.push(rand(3) === 0 ? -v : v);
    }
    for (const v of ints) {
      checked++;
      const bytes = jsonBytes(v);
      const want = referenceUtf8(JSON.stringify(v));
      if (!sameBytes(bytes, want)) fail(`jsonBytes(${show(v)}) wrote ${utf8Decode(bytes)}`);
      const back = parseJson(bytes);
      if (!Object.is(back, JSON.parse(JSON.stringify(v))))
        fail(`parseJson(jsonBytes(${show(v)})) read ${show(back)}`);
    }
  }

  // Short byte strings over the characters of numbers: read as JSON.parse does, or rejected.
  function numbers() {
    const alphabet = "0123456789-+.eE x";
    for (let i = 0; i < count; i++) {
      checked++;
      const n = rand(19);
      let text = "";
      for (let j = 0; j < n; j++) text += alphabet[rand(i % 2 ? 10 : alphabet.length)]; // half digits only
      if (i % 5 === 0) text = "-" + text;
      const got = outcomeOf(() => parseJson(referenceUtf8(text)));
      const want = outcomeOf(() => JSON.parse(text));
      const same = "error" in want ? got.error === "rejected" : Object.is(got.value, want.value);
      if (!same)
        fail(
          `parseJson(${JSON.stringify(text)}): ${JSON.stringify(got)}, JSON.parse: ${JSON.stringify(want)}`,
        );
    }
  }

  // Strings: UTF-8 against the reference, and back.
  function strings() {
    const ranges = [
      [0x20, 0x7f],
      [0, 0x20],
      [0x80, 0x100],
      [0x100, 0xd800],
      [0xe000, 0x10000],
      [0x10000, 0x110000],
      [0xd800, 0xe000],
    ];
    for (let i = 0; i < count; i++) {
      checked++;
      let text = "";
      const n = rand(40);
      const mix = rand(ranges.length) + 1;
      for (let j = 0; j < n; j++) {
        const [lo, hi] = ranges[rand(mix)];
        text += String.fromCodePoint(lo + rand(hi - lo));
      }
      const bytes = utf8Encode(text);
      const want = referenceUtf8(text);
      if (!sameBytes(bytes, want)) fail(`utf8Encode(${JSON.stringify(text)}) differs from the reference`);
      const wellFormed = text.isWellFormed();
      const back = utf8Decode(want, true);
      if (wellFormed && back !== text)
        fail(`utf8Decode(UTF-8 of ${JSON.stringify(text)}) read ${JSON.stringify(back)}`);
      const value = { s: text, n: i };
      if (wellFormed && JSON.stringify(parseJson(jsonBytes(value))) !== JSON.stringify(value)) {
        fail(`parseJson(jsonBytes(${JSON.stringify(value)})) differs`);
      }
    }
  }

  // Invalid UTF-8: rejected when strict, replaced otherwise.
  function invalid() {
    for (const bad of [
      [0xff],
      [0xc0, 0x80],
      [0xe2, 0x82],
      [0xed, 0xa0, 0x80],
      [0xf4, 0x90, 0x80, 0x80],
      [0x41, 0x80],
    ]) {
      checked++;
      const bytes = new Uint8Array(bad);
      if (!("error" in outcomeOf(() => utf8Decode(bytes, true))))
        fail(`utf8Decode([${bad}], strict) accepted it`);
      if (!utf8Decode(bytes).includes("\ufffd")) fail(`utf8Decode([${bad}]) has no U+FFFD`);
    }
  }

  // Large texts (the base64 conversions see every byte): `count` 64 KB blocks of one unit.
  function large() {
    const unit = ["a", "é", "€", "😀"][rand(4)];
    checked++;
    const text = unit.repeat((count << 16) / unit.length);
    if (utf8Decode(utf8Encode(text), true) !== text) fail(`${count * 64} KB of ${unit} did not come back`);
  }
}

class CodecCheck {
  process(event) {
    const { part, n } = event.json();
    return Outcome.emitOne(Output.json(check(part, n)));
  }
}

export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } = exportPlugin(CodecCheck);
