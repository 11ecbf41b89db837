// Type declarations of the Eddy JavaScript layer (eddy.js, imported as "eddy-sdk"), for editors
// and `tsc --checkJs`. The build does not read them. A plugin's jsconfig.json maps "eddy-sdk"
// to this file (see guest-sdk/js/template/jsconfig.json).

/** A JSON value as `JSON.parse` returns it. */
export type Json = null | boolean | number | string | Json[] | { [member: string]: Json };

/** Bytes for a payload or a `"bytes"` key: a Uint8Array, a string (UTF-8) or an array of bytes. */
export type BytesLike = Uint8Array | string | number[];

// ------------------------------------------------------------------------------------------
// UTF-8 and JSON

/** The UTF-8 bytes of a string (lone surrogates become U+FFFD). */
export function utf8Encode(text: string): Uint8Array;
/** Decodes UTF-8 bytes. With `strict`, invalid UTF-8 throws; otherwise it becomes U+FFFD. */
export function utf8Decode(bytes: Uint8Array | number[], strict?: boolean): string;
/** Parses JSON from UTF-8 bytes (or a string). Throws a SyntaxError on bad input. */
export function parseJson(bytes: Uint8Array | string): any;
/** The compact JSON encoding of a value, as UTF-8 bytes: the shared state encoding. */
export function jsonBytes(value: unknown): Uint8Array;
/** Whether `v` is a JSON integer that fits a u64 (exactly representable: up to 2^53). */
export function isU64(v: unknown): v is number;
/** Whether `v` is a plain JSON object (not an array, not null). */
export function isObject(v: unknown): v is { [member: string]: any };
/** Throws if `obj` has a member not in `allowed` (like serde's `deny_unknown_fields`). */
export function denyUnknownFields(obj: unknown, allowed: readonly string[]): void;

// ------------------------------------------------------------------------------------------
// Log and clock

/** Writes into the host's log: `log.info("flagged " + id)`. */
export const log: {
  trace(message: unknown): void;
  debug(message: unknown): void;
  info(message: unknown): void;
  warn(message: unknown): void;
  error(message: unknown): void;
};

/** The host's processing-time clock (the clock of state TTL), ms since the Unix epoch. */
export function nowMs(): number;

// ------------------------------------------------------------------------------------------
// Events, outputs, outcomes

/** One input event. */
export class Event {
  protected constructor();
  /** The key the host extracted; keyed state is partitioned by it. */
  readonly key: Uint8Array;
  /** The NATS subject the event was published on. */
  readonly subject: string;
  /** Every NATS header as `[name, value]`, in message order; a name may repeat. */
  readonly headers: [string, string][];
  /** The payload, as published. */
  readonly payload: Uint8Array;
  /** When the stream stored the message, ms since the Unix epoch. */
  readonly timestampMs: number;
  /** The stream's sequence number of the message. */
  readonly sequence: number;
  /** The key as text (UTF-8, invalid bytes replaced). */
  keyText(): string;
  /** The payload as text. */
  text(): string;
  /** The payload parsed as JSON; throws on invalid JSON. */
  json(): any;
  /** The first header called `name` (case-sensitive), or null. */
  header(name: string): string | null;
}

/** One event of a broadcast input. Its `key` is empty. */
export class BroadcastEvent extends Event {
  /** The broadcast input's name (`[broadcast.<name>]` in the pipeline file). */
  readonly input: string;
}

/** A message to publish: `new Output(payload).subject("x").header("A", "1")`. */
export class Output {
  constructor(payload: BytesLike);
  /** An output whose payload is the compact JSON of `value`. */
  static json(value: unknown): Output;
  /** Publishes to `subject` instead of the pipeline's default output subject. */
  subject(subject: string): this;
  /** Adds a header (a name may repeat). */
  header(name: string, value: unknown): this;
}

/** What became of an event. Built with the static functions only. */
export class Outcome {
  private constructor();
  /** Publish these outputs (possibly none). */
  static emit(outputs: Iterable<Output>): Outcome;
  /** Publish one output. */
  static emitOne(output: Output): Outcome;
  /** Publish the compact JSON of `value` to the default subject (rejects if it has none). */
  static emitJson(value: unknown): Outcome;
  /** Filter the event out on purpose. */
  static drop(): Outcome;
  /** Send the event to the dead-letter subject with this reason. */
  static reject(reason: unknown): Outcome;
}

// ------------------------------------------------------------------------------------------
// Keyed state

/** The host's state errors, and the layer's own `"decode"` and `"encode"`. */
export type StateErrorKind =
  | "unknown-state"
  | "wrong-kind"
  | "no-such-event"
  | "read-only"
  | "storage"
  | "decode"
  | "encode";

/** Why a state call failed; the message is worded as in every Eddy SDK. */
export class StateError extends Error {
  constructor(kind: StateErrorKind, detail?: string);
  readonly kind: StateErrorKind;
  readonly detail: string | undefined;
}

/** Time-to-live of a state's entries, from `ttl(...)`. */
export interface Ttl {
  readonly ttlMs: number;
  readonly updateOnRead: boolean;
  readonly returnExpired: boolean;
}

/**
 * Time-to-live of a state's entries (Flink's StateTtlConfig): entries expire `ms` after their
 * last write; `updateOnRead` makes reads stamp them too; `returnExpired` may return an expired
 * entry not cleaned up yet (once). The pipeline's configuration may override it.
 */
export function ttl(ms: number, options?: { updateOnRead?: boolean; returnExpired?: boolean }): Ttl;

/** How map keys become the bytes the host orders entries by. */
export interface KeyCodec<K> {
  encode(key: K): Uint8Array;
  decode(bytes: Uint8Array): K;
}

/** The key encodings every Eddy SDK shares: byte order is the keys' natural order. */
export const KeyTypes: {
  readonly string: KeyCodec<string>;
  readonly bytes: KeyCodec<Uint8Array>;
  readonly u32: KeyCodec<number>;
  readonly u64: KeyCodec<number | bigint>;
  readonly i32: KeyCodec<number>;
  readonly i64: KeyCodec<number | bigint>;
};

/** A key type by name (see `KeyTypes`), or a codec of your own. */
export type KeyType = keyof typeof KeyTypes | KeyCodec<any>;

/** What every keyed-state handle has. Calls act on the key of the event being processed. */
declare abstract class StateHandle {
  /** The state's name (unique in the pipeline). */
  readonly name: string;
  /** The state's time-to-live, or null. */
  readonly ttl: Ttl | null;
  /** Opens the state in the host now (it is opened on first use otherwise). */
  open(): void;
  /** Asks the host to visit every key of this state (from processBroadcast or migrate). */
  visitAllKeys(tag: string): void;
}

/** One JSON value per key (Flink ValueState). */
export class ValueState<T = any> extends StateHandle {
  constructor(name: string, options?: { ttl?: Ttl | null });
  /** The current key's value, or null. */
  get(): T | null;
  set(value: T): void;
  /** Sets the value with its own time-to-live (wins over the state's TTL for this entry). */
  setWithTtl(value: T, ttlMs: number): void;
  /** Reads, applies `f(valueOrNull)`, writes and returns the result. */
  update(f: (value: T | null) => T): T;
  clear(): void;
}

/** Entries key → JSON value per key, ordered by key bytes, with a Map's methods. */
export class MapState<K = string, V = any> extends StateHandle {
  constructor(name: string, options?: { keyType?: KeyType; ttl?: Ttl | null });
  /** The value of entry `key`, or null. */
  get(key: K): V | null;
  /** Sets entry `key`; returns the map. */
  set(key: K, value: V): this;
  /** Sets entry `key` with its own time-to-live; returns the map. */
  setWithTtl(key: K, value: V, ttlMs: number): this;
  /** Whether entry `key` exists. Counts as a read for TTL. */
  has(key: K): boolean;
  /** Removes entry `key` (nothing happens if it is absent). */
  delete(key: K): void;
  isEmpty(): boolean;
  clear(): void;
  /** [key, value] pairs in key order, fetched from the host `pageSize` (256) at a time. */
  entries(pageSize?: number): IterableIterator<[K, V]>;
  keys(pageSize?: number): IterableIterator<K>;
  values(pageSize?: number): IterableIterator<V>;
  [Symbol.iterator](): IterableIterator<[K, V]>;
}

/** A list of JSON values per key, oldest first (Flink ListState). */
export class ListState<T = any> extends StateHandle {
  constructor(name: string, options?: { ttl?: Ttl | null });
  /** Every element (an empty array when there is none). */
  get(): T[];
  add(value: T): void;
  /** Appends every element, in order. */
  addAll(values: Iterable<T>): void;
  /** Replaces the whole list. */
  update(values: Iterable<T>): void;
  clear(): void;
  [Symbol.iterator](): IterableIterator<T>;
}

// ------------------------------------------------------------------------------------------
// Broadcast state

export type BroadcastErrorKind = "unknown-map" | "read-only" | "storage" | "decode";

/** Why a broadcast state call failed. */
export class BroadcastError extends Error {
  constructor(kind: BroadcastErrorKind, detail?: string);
  readonly kind: BroadcastErrorKind;
}

/**
 * A named map shared by every key, with a Map's methods: read anywhere, written only from
 * `processBroadcast`. Within a keyed batch a string or number key is read from the host once.
 */
export class BroadcastMap<K = string, V = any> {
  constructor(name: string, options?: { keyType?: KeyType });
  readonly name: string;
  /** Opens the map in the host now (it is opened on first use otherwise). */
  open(): void;
  get(key: K): V | null;
  has(key: K): boolean;
  /** Only in processBroadcast; returns the map. */
  set(key: K, value: V): this;
  /** Only in processBroadcast. */
  delete(key: K): void;
  /** Only in processBroadcast. */
  clear(): void;
  entries(pageSize?: number): IterableIterator<[K, V]>;
  keys(pageSize?: number): IterableIterator<K>;
  values(pageSize?: number): IterableIterator<V>;
  [Symbol.iterator](): IterableIterator<[K, V]>;
}

// ------------------------------------------------------------------------------------------
// Lookups

export type LookupErrorKind = "unknown-store" | "failed" | "decode";

/** Why a lookup failed. */
export class LookupError extends Error {
  constructor(kind: LookupErrorKind, detail?: string);
  readonly kind: LookupErrorKind;
}

/** One lookup for `planLookups` to return, from `LookupStore.request`. */
export interface LookupRequest {
  readonly store: string;
  readonly key: string;
}

/** A lookup store the pipeline declares as `[lookup.<name>]`. */
export class LookupStore {
  constructor(name: string);
  readonly name: string;
  /** A request for `planLookups`, so the host fetches the key ahead of `process`. */
  request(key: unknown): LookupRequest;
  /** The value's bytes, or null if the store has no such key. Throws a LookupError. */
  get(key: string): Uint8Array | null;
  /** The value parsed as JSON, or null. */
  getJson(key: string): any;
  /** One result per key, in order; failures are returned, not thrown. */
  getMany(keys: Iterable<string>): ({ ok: Uint8Array | null } | { err: LookupError })[];
}

// ------------------------------------------------------------------------------------------
// Exporting a plugin

/** An entry handed to `visit`: the event key, the map key (map state only) and the value. */
export interface VisitedEntry {
  readonly key: Uint8Array;
  readonly mapKey: Uint8Array | null;
  readonly value: Uint8Array;
}

/** What `visit` does with an entry. */
export type VisitAction = "keep" | "remove" | { set: BytesLike };

/** The methods the layer calls on a plugin; only `process` is required. */
export interface Plugin {
  /** Once per instance, with `plugin.config` parsed (`{}` when unset); throw to refuse it. */
  init?(config: any): void;
  /** Once per event, in order; a throw rejects the event with `uncaught exception: ...`. */
  process(event: Event): Outcome | Output;
  /** Once per broadcast event; throw to dead-letter it (its writes are discarded). */
  processBroadcast?(event: BroadcastEvent): void;
  /** The lookups `process` will make for this event, fetched ahead and concurrently. */
  planLookups?(event: Event): LookupRequest[] | null | undefined;
  /** One entry of a state asked with `visitAllKeys(tag)`. Default: keep. */
  visit?(tag: string, state: string, entry: VisitedEntry): VisitAction | undefined;
  /** Once when this version replaces `previousVersion` on running state; throw to refuse. */
  migrate?(previousVersion: string): void;
}

/** The component's exports, built by `exportPlugin`. */
export interface PluginExports {
  handler: object;
  broadcastHandler: object;
  lookupPlanner: object;
  keyedVisitor: object;
  migrator: object;
}

/**
 * Turns a plugin class into the component's exports:
 * `export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } = exportPlugin(MyPlugin);`
 */
export function exportPlugin(PluginClass: new () => Plugin): PluginExports;

/** The reason every event is rejected with while `init` has not succeeded. */
export const NOT_INITIALISED: string;
/** The reason broadcast events are rejected with by a plugin without `processBroadcast`. */
export const NO_BROADCAST: string;
