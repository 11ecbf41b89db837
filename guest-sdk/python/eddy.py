"""Eddy guest layer for Python plugins (built with componentize-py).

A plugin is a module (``app.py``) with a class that has ``init(config)`` and ``process(event)``
(and, optionally, ``process_broadcast``, ``plan_lookups``, ``visit``, ``migrate``), exported
with::

    Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator = eddy.export(MyPlugin)

Everything here mirrors the Rust SDK (guest-sdk/src): the same state encoding (values are
compact JSON in UTF-8, map keys per key type), the same defaults for the optional exports and
the same error texts, so plugins in either language share state and behave alike.
"""

from __future__ import annotations

import enum
import json
import json.encoder
import json.scanner
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple,
                    Union)

from componentize_py_types import Err, Ok
from wit_world.exports import broadcast_handler as _bh
from wit_world.exports import keyed_visitor as _kv
from wit_world.exports import lookup_planner as _lp
from wit_world.imports import broadcast_state as _bs
from wit_world.imports import clock as _clock
from wit_world.imports import keyed_state as _ks
from wit_world.imports import log as _log
from wit_world.imports import lookup as _lookup
from wit_world.imports import types as _types

__all__ = [
    "BroadcastError", "BroadcastEvent", "BroadcastMap", "Event", "KeyType", "ListState",
    "LookupStore", "LookupStoreError", "MapState", "Outcome", "Output", "SetValue", "StateError",
    "Ttl", "ValueState", "VisitAction", "deny_unknown_fields", "export", "is_u64", "json_bytes",
    "log", "now_ms", "parse_json",
]

# ------------------------------------------------------------------------------------------
# JSON


# One encoder for every call: ``json.dumps`` with these options would build a new JSONEncoder
# each time, which costs as much as the encoding of a small value.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode = _ENCODER.encode


def _c_encoder() -> Optional[Callable[[Any, int], Any]]:
    """The C encoder that ``_ENCODER.encode`` builds at every call, built once: the same
    options, the same output and errors, without the Python frames around it (about 2 µs of a
    small value's 5 inside the component). None where CPython has no ``_json``."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make({}, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False,
                False, False)


_encode_fast = _c_encoder()
# ``json.loads``'s scanner, called without ``loads``' and ``decode``'s frames and their two
# whitespace matches (about 3 µs of a small object's 7 inside the component).
_scan = getattr(json.scanner, "c_make_scanner", None)
_scan = _scan(json.JSONDecoder()) if _scan is not None else None


# Whether the encoder built once is in use: code it calls (a dict subclass's ``items``, a
# finalizer) may encode too, and must not share its record of the objects it is inside.
_encoding = False


def json_bytes(value: Any) -> bytes:
    """The compact JSON encoding of ``value`` in UTF-8: the shared state encoding."""
    global _encode_fast, _encoding
    if type(value) is int:  # the common list element: digits, as the encoder writes them
        return str(value).encode()
    if _encode_fast is None or _encoding:
        return _encode(value).encode()
    _encoding = True
    try:
        return "".join(_encode_fast(value, 0)).encode()
    except BaseException:
        # A failed encode can leave the objects it was inside in the encoder's record of
        # them (its check for cycles), which would fail the next encode of those objects.
        _encode_fast = _c_encoder()
        raise
    finally:
        _encoding = False


def _loads(text: str) -> Any:
    """``json.loads(text)``. Text with nothing around its value (what JSON writers, and every
    layer's state, give) is read by the scanner alone; anything else, and every error, goes
    through ``json.loads`` itself, so values and messages are exactly its own."""
    if _scan is not None:
        try:
            value, end = _scan(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return value
    return json.loads(text)


def parse_json(data: Union[bytes, str]) -> Any:
    """Parses JSON from UTF-8 bytes (or a string). Raises ``ValueError`` on bad input."""
    if type(data) is bytes and data.isdigit() and (len(data) == 1 or data[0] != 0x30):
        return int(data)  # a plain non-negative integer, read as json.loads would
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    return _loads(data)


def is_u64(v: Any) -> bool:
    """Whether ``v`` is a JSON integer that fits a u64 (``bool`` is not an integer here)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def deny_unknown_fields(obj: Dict[str, Any], allowed: Iterable[str]) -> None:
    """Raises ``ValueError`` if ``obj`` has a member not in ``allowed`` (serde's
    ``deny_unknown_fields``)."""
    if not isinstance(obj, dict):
        raise ValueError(f"invalid type: {json.dumps(obj)}, expected an object")
    allowed = list(allowed)
    for k in obj:
        if k not in allowed:
            names = ", ".join(f"`{a}`" for a in allowed)
            raise ValueError(f"unknown field `{k}`, expected one of {names}")


def _to_bytes(payload: Union[bytes, bytearray, str]) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


# ------------------------------------------------------------------------------------------
# Log and clock


class _Log:
    """Writes into the host's log: ``log.info(f"flagged {tx_id}")``."""

    def trace(self, message: str) -> None:
        _log.log(_log.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    def error(self, message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


log = _Log()


def now_ms() -> int:
    """The host's processing-time clock (the clock of state TTL), ms since the Unix epoch."""
    return _clock.now_ms()


# ------------------------------------------------------------------------------------------
# Events, outputs, outcomes


class Event:
    """One input event: ``key`` and ``payload`` are bytes."""

    __slots__ = ("key", "subject", "headers", "payload", "timestamp_ms", "sequence")

    def __init__(self, key: bytes, payload: bytes, subject: str = "",
                 headers: Optional[List[Tuple[str, str]]] = None, timestamp_ms: int = 0,
                 sequence: int = 0):
        self.key = key
        self.payload = payload
        self.subject = subject
        self.headers = headers or []
        self.timestamp_ms = timestamp_ms
        self.sequence = sequence

    def key_text(self) -> str:
        return self.key.decode("utf-8", "replace")

    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The payload parsed as JSON; raises ``ValueError`` on invalid JSON."""
        return parse_json(self.payload)

    def header(self, name: str) -> Optional[str]:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class BroadcastEvent(Event):
    """One event of a broadcast input; ``input_name`` is the input's name
    (``[broadcast.<name>]`` in the pipeline file)."""

    __slots__ = ("input_name",)

    def __init__(self, input_name: str, payload: bytes, **kw: Any):
        super().__init__(b"", payload, **kw)
        self.input_name = input_name


class Output:
    """A message to publish: ``Output(payload).to("subject").header("A", "1")``."""

    __slots__ = ("payload", "subject", "headers")

    def __init__(self, payload: Union[bytes, str]):
        self.payload = _to_bytes(payload)
        self.subject: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []

    @staticmethod
    def json(value: Any) -> "Output":
        """An output whose payload is the compact JSON of ``value``."""
        return Output(json_bytes(value))

    def to(self, subject: str) -> "Output":
        """Publishes to ``subject`` instead of the pipeline's default output subject."""
        self.subject = subject
        return self

    def header(self, name: str, value: Any) -> "Output":
        """Adds a header (a name may repeat)."""
        self.headers.append((str(name), str(value)))
        return self


class Outcome:
    """What became of an event. Build with the static methods; ``kind`` is an
    ``Outcome.Kind``."""

    class Kind(enum.Enum):
        EMIT = "emit"
        DROP = "drop"
        REJECT = "reject"

    __slots__ = ("kind", "outputs", "reason")

    def __init__(self, kind: "Outcome.Kind", outputs: Optional[List[Output]] = None,
                 reason: str = ""):
        self.kind = kind
        self.outputs = outputs or []
        self.reason = reason

    @staticmethod
    def emit(outputs: Iterable[Output]) -> "Outcome":
        return Outcome(Outcome.Kind.EMIT, list(outputs))

    @staticmethod
    def emit_one(output: Output) -> "Outcome":
        return Outcome(Outcome.Kind.EMIT, [output])

    @staticmethod
    def emit_json(value: Any) -> "Outcome":
        try:
            return Outcome.emit_one(Output.json(value))
        except (TypeError, ValueError) as e:
            return Outcome.reject(f"cannot encode output as JSON: {e}")

    @staticmethod
    def drop() -> "Outcome":
        return Outcome(Outcome.Kind.DROP)

    @staticmethod
    def reject(reason: str) -> "Outcome":
        return Outcome(Outcome.Kind.REJECT, reason=str(reason))

    def __repr__(self) -> str:
        return f"Outcome({self.kind}, {self.outputs!r}, {self.reason!r})"


def _lower_outcome(o: Any) -> _types.Outcome:
    if isinstance(o, Output):
        o = Outcome.emit_one(o)
    if not isinstance(o, Outcome):
        return _types.Outcome_Reject("plugin returned something that is not an Outcome")
    if o.kind is Outcome.Kind.EMIT:
        return _types.Outcome_Emit([_types.Output(x.subject, x.headers, x.payload) for x in o.outputs])
    if o.kind is Outcome.Kind.DROP:
        return _types.Outcome_Drop()
    return _types.Outcome_Reject(o.reason)


# ------------------------------------------------------------------------------------------
# Keyed state


class StateError(Exception):
    """Why a state call failed: ``kind`` (a ``StateError.Kind``) and the host's ``detail``."""

    class Kind(enum.Enum):
        """The host's state errors (values: their WIT names), and this layer's own."""
        UNKNOWN_STATE = "unknown-state"
        WRONG_KIND = "wrong-kind"
        NO_SUCH_EVENT = "no-such-event"
        READ_ONLY = "read-only"
        STORAGE = "storage"
        DECODE = "decode"
        ENCODE = "encode"

    def __init__(self, kind: "StateError.Kind", detail: str = ""):
        self.kind = kind
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        k, m = self.kind, self.detail
        if k is StateError.Kind.UNKNOWN_STATE:
            return "state is not open in this plugin instance"
        if k is StateError.Kind.WRONG_KIND:
            return f"state exists with another kind: {m}"
        if k is StateError.Kind.NO_SUCH_EVENT:
            return "no event is being processed: keyed state is only reachable from `process`"
        if k is StateError.Kind.READ_ONLY:
            return f"state is read-only here: {m}"
        if k is StateError.Kind.STORAGE:
            return f"state storage failed: {m}"
        return m


def _variant(err: Any) -> Tuple[str, str]:
    """A WIT error variant as (kebab-case name, message)."""
    name = type(err).__name__.split("_", 1)[-1]
    kebab = "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")
    return kebab, getattr(err, "value", "")


def _state_call(f: Callable[..., Any], *args: Any) -> Any:
    """Calls the keyed-state import ``f(*args)``; a WIT error is raised as StateError."""
    try:
        return f(*args)
    except Err as e:
        name, detail = _variant(e.value)
        raise StateError(StateError.Kind(name), detail) from None


# Index of the event being processed in the current batch, or None.
_current_event: Optional[int] = None
# Broadcast reads of the keyed batch being handled: broadcast maps change only between keyed
# batches, so a key is asked of the host once per batch, as in the Rust SDK. Bytes are kept,
# not decoded values, so a plugin that changes a value it read cannot change the next event's.
_batch_reads: Dict[Tuple[int, bytes], Optional[bytes]] = {}


class Ttl:
    """Time-to-live of a state's entries (Flink's StateTtlConfig): entries expire ``ttl_ms``
    after their last write; ``update_on_read`` makes reads stamp them too;
    ``return_expired`` may return an expired entry not cleaned up yet (once)."""

    __slots__ = ("ttl_ms", "update_on_read", "return_expired")

    def __init__(self, ttl_ms: int, update_on_read: bool = False, return_expired: bool = False):
        self.ttl_ms = ttl_ms
        self.update_on_read = update_on_read
        self.return_expired = return_expired

    def _wit(self) -> _ks.TtlConfig:
        return _ks.TtlConfig(
            self.ttl_ms,
            _ks.TtlUpdate.ON_READ_AND_WRITE if self.update_on_read else _ks.TtlUpdate.ON_CREATE_AND_WRITE,
            _ks.TtlVisibility.RETURN_EXPIRED_IF_NOT_CLEANED_UP if self.return_expired
            else _ks.TtlVisibility.NEVER_RETURN_EXPIRED,
        )


def _fixed_int(width: int, signed: bool):
    bits = width * 8
    flip = 1 << (bits - 1) if signed else 0
    name = f"{'i' if signed else 'u'}{bits}"
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def encode(k: int) -> bytes:
        if not isinstance(k, int) or not lo <= k <= hi:
            raise ValueError(f"{k!r} is not a {name}")
        return ((k & ((1 << bits) - 1)) ^ flip).to_bytes(width, "big")

    def decode(b: bytes) -> int:
        if len(b) != width:
            raise ValueError(f"a {name} key is {width} bytes, this one is {len(b)}")
        v = int.from_bytes(b, "big") ^ flip
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v

    return encode, decode


class KeyType(enum.Enum):
    """How ``MapState`` and ``BroadcastMap`` keys become the bytes the host orders entries by:
    the same bytes as the Rust SDK's ``MapKey``, so byte order is the keys' natural order."""

    STRING = "string"  #: UTF-8
    BYTES = "bytes"  #: as they are
    U32 = "u32"  #: big-endian, 4 bytes
    U64 = "u64"  #: big-endian, 8 bytes
    I32 = "i32"  #: big-endian, 4 bytes, sign bit flipped
    I64 = "i64"  #: big-endian, 8 bytes, sign bit flipped


_KEY_CODECS = {
    KeyType.STRING: (lambda k: k.encode("utf-8"), lambda b: bytes(b).decode("utf-8")),
    KeyType.BYTES: (lambda k: bytes(k), lambda b: bytes(b)),
    KeyType.U32: _fixed_int(4, False),
    KeyType.U64: _fixed_int(8, False),
    KeyType.I32: _fixed_int(4, True),
    KeyType.I64: _fixed_int(8, True),
}

#: A ``KeyType``, or an ``(encode, decode)`` pair of functions for keys of your own.
KeyCodec = Union[KeyType, Tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]


def _key_codec(key_type: KeyCodec) -> Tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if isinstance(key_type, KeyType):
        return _KEY_CODECS[key_type]
    if isinstance(key_type, str):
        raise TypeError(f"key_type is a KeyType (KeyType.{key_type.upper()}) or an (encode, decode) pair, "
                        f"not {key_type!r}")
    encode, decode = key_type
    return encode, decode


def _pages(fetch: Callable[[Optional[bytes], int], List[Tuple[bytes, bytes]]],
           page_size: int) -> Iterator[Tuple[bytes, bytes]]:
    """The (key, value) bytes of a map, fetched ``page_size`` at a time as the iteration
    advances: ``fetch(after, page_size)`` returns the page after key ``after`` (None: the
    first page)."""
    after: Optional[bytes] = None
    while True:
        page = fetch(after, page_size)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1][0]


class _MapIteration:
    """``items()``, ``keys()``, ``values()`` and iteration over the keys (as a dict does) for a
    map handle that has ``_raw(page_size)`` (the entries' bytes, paged), ``_decode_key`` and
    ``_decode``. Entries are fetched from the host ``page_size`` at a time as the iteration
    advances."""

    def items(self, page_size: int = 256) -> Iterator[Tuple[Any, Any]]:
        """The entries as (key, value) in key order."""
        return ((self._decode_key(k), self._decode(v)) for k, v in self._raw(page_size))

    def keys(self, page_size: int = 256) -> Iterator[Any]:
        """The keys in key order (values are not decoded)."""
        return (self._decode_key(k) for k, _ in self._raw(page_size))

    def values(self, page_size: int = 256) -> Iterator[Any]:
        """The values in key order."""
        return (self._decode(v) for _, v in self._raw(page_size))

    def __iter__(self) -> Iterator[Any]:
        return self.keys()


class _StateHandle:
    def __init__(self, name: str, kind: _ks.StateKind, ttl: Optional[Ttl]):
        self.name = name
        self.kind = kind
        self.ttl = ttl
        self._id: Optional[int] = None

    def open(self) -> int:
        """Opens the state in the host now (it is opened on first use otherwise)."""
        if self._id is None:
            ttl = self.ttl._wit() if self.ttl is not None else None
            self._id = _state_call(_ks.open, self.name, self.kind, ttl)
        return self._id

    def _target(self) -> Tuple[int, int]:
        if _current_event is None:
            raise StateError(StateError.Kind.NO_SUCH_EVENT)
        sid = self._id
        return (sid if sid is not None else self.open()), _current_event

    def visit_all_keys(self, tag: str) -> None:
        """Asks the host to visit every key of this state (from ``process_broadcast`` or
        ``migrate``)."""
        sid = self.open()
        _state_call(_ks.visit_all_keys, sid, tag)

    def _encode(self, value: Any) -> bytes:
        try:
            return json_bytes(value)
        except (TypeError, ValueError) as e:
            raise StateError(StateError.Kind.ENCODE, f"cannot encode a value of state `{self.name}`: {e}") from None

    def _decode(self, data: bytes) -> Any:
        try:
            return parse_json(data)
        except ValueError as e:
            raise StateError(StateError.Kind.DECODE, f"cannot decode a value of state `{self.name}`: {e}") from None


class ValueState(_StateHandle):
    """One JSON value per key (Flink ValueState)."""

    def __init__(self, name: str, ttl: Optional[Ttl] = None):
        super().__init__(name, _ks.StateKind.VALUE, ttl)

    def get(self, default: Any = None) -> Any:
        """The value of the current event's key, or ``default``."""
        sid, ev = self._target()
        data = _state_call(_ks.value_get, sid, ev)
        return default if data is None else self._decode(data)

    def set(self, value: Any) -> None:
        sid, ev = self._target()
        data = self._encode(value)
        _state_call(_ks.value_set, sid, ev, data)

    def set_with_ttl(self, value: Any, ttl_ms: int) -> None:
        """Sets the value with its own time-to-live (wins over the state's TTL for it)."""
        sid, ev = self._target()
        data = self._encode(value)
        _state_call(_ks.value_set_with_ttl, sid, ev, data, ttl_ms)

    def update(self, f: Callable[[Any], Any]) -> Any:
        """Reads, applies ``f(value_or_None)``, writes and returns the result."""
        new = f(self.get())
        self.set(new)
        return new

    def clear(self) -> None:
        sid, ev = self._target()
        _state_call(_ks.value_clear, sid, ev)


class MapState(_StateHandle, _MapIteration):
    """Entries key → JSON value per key, ordered by key bytes: ``key in state``, iteration
    over the keys, ``items()``. Keys are encoded by ``key_type`` (a ``KeyType`` or an
    ``(encode, decode)`` pair)."""

    def __init__(self, name: str, key_type: KeyCodec = KeyType.STRING, ttl: Optional[Ttl] = None):
        super().__init__(name, _ks.StateKind.MAP, ttl)
        self._ek, self._dk = _key_codec(key_type)

    def _key(self, key: Any) -> bytes:
        try:
            return self._ek(key)
        except (TypeError, ValueError, AttributeError) as e:
            raise StateError(StateError.Kind.ENCODE, f"cannot encode a key of state `{self.name}`: {e}") from None

    def _decode_key(self, data: bytes) -> Any:
        try:
            return self._dk(data)
        except ValueError as e:
            raise StateError(StateError.Kind.DECODE, f"cannot decode a key of state `{self.name}`: {e}") from None

    def get(self, key: Any, default: Any = None) -> Any:
        sid, ev = self._target()
        k = self._key(key)
        data = _state_call(_ks.map_get, sid, ev, k)
        return default if data is None else self._decode(data)

    def put(self, key: Any, value: Any) -> None:
        sid, ev = self._target()
        k, v = self._key(key), self._encode(value)
        _state_call(_ks.map_put, sid, ev, k, v)

    def put_with_ttl(self, key: Any, value: Any, ttl_ms: int) -> None:
        sid, ev = self._target()
        k, v = self._key(key), self._encode(value)
        _state_call(_ks.map_put_with_ttl, sid, ev, k, v, ttl_ms)

    def remove(self, key: Any) -> None:
        sid, ev = self._target()
        k = self._key(key)
        _state_call(_ks.map_remove, sid, ev, k)

    def __contains__(self, key: Any) -> bool:
        """``key in state``: whether entry ``key`` exists. Counts as a read for TTL."""
        sid, ev = self._target()
        k = self._key(key)
        return _state_call(_ks.map_contains, sid, ev, k)

    def is_empty(self) -> bool:
        sid, ev = self._target()
        return _state_call(_ks.map_is_empty, sid, ev)

    def clear(self) -> None:
        sid, ev = self._target()
        _state_call(_ks.map_clear, sid, ev)

    def _raw(self, page_size: int) -> Iterator[Tuple[bytes, bytes]]:
        sid, ev = self._target()
        return _pages(lambda after, n: _state_call(_ks.map_entries, sid, ev, after, n), page_size)


class ListState(_StateHandle):
    """A list of JSON values per key, oldest first (Flink ListState); iterable, and
    ``value in state`` compares decoded elements."""

    def __init__(self, name: str, ttl: Optional[Ttl] = None):
        super().__init__(name, _ks.StateKind.LIST, ttl)

    def get(self) -> List[Any]:
        sid, ev = self._target()
        return [self._decode(b) for b in _state_call(_ks.list_get, sid, ev)]

    def add(self, value: Any) -> None:
        sid, ev = self._target()
        v = self._encode(value)
        _state_call(_ks.list_add, sid, ev, v)

    def add_all(self, values: Iterable[Any]) -> None:
        sid, ev = self._target()
        vs = [self._encode(v) for v in values]
        _state_call(_ks.list_add_all, sid, ev, vs)

    def update(self, values: Iterable[Any]) -> None:
        """Replaces the whole list."""
        sid, ev = self._target()
        vs = [self._encode(v) for v in values]
        _state_call(_ks.list_update, sid, ev, vs)

    def clear(self) -> None:
        sid, ev = self._target()
        _state_call(_ks.list_clear, sid, ev)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def __contains__(self, value: Any) -> bool:
        return value in self.get()


# ------------------------------------------------------------------------------------------
# Broadcast state


class BroadcastError(Exception):
    """Why a broadcast state call failed: ``kind`` (a ``BroadcastError.Kind``) and
    ``detail``."""

    class Kind(enum.Enum):
        UNKNOWN_MAP = "unknown-map"
        READ_ONLY = "read-only"
        STORAGE = "storage"
        DECODE = "decode"

    def __init__(self, kind: "BroadcastError.Kind", detail: str = ""):
        self.kind = kind
        self.detail = detail
        if kind is BroadcastError.Kind.UNKNOWN_MAP:
            text = "broadcast map is not open"
        elif kind is BroadcastError.Kind.READ_ONLY:
            text = f"broadcast state is read-only here: {detail}"
        elif kind is BroadcastError.Kind.STORAGE:
            text = f"broadcast storage failed: {detail}"
        else:
            text = detail
        super().__init__(text)


def _broadcast_call(f: Callable[..., Any], *args: Any) -> Any:
    """Calls the broadcast-state import ``f(*args)``; a WIT error is raised as BroadcastError."""
    try:
        return f(*args)
    except Err as e:
        name, detail = _variant(e.value)
        raise BroadcastError(BroadcastError.Kind(name), detail) from None


class BroadcastMap(_MapIteration):
    """A named map shared by every key, written only from ``process_broadcast``: ``key in
    bmap``, iteration over the keys, ``items()``. Values are JSON; keys are encoded as for
    MapState (default ``KeyType.STRING``)."""

    def __init__(self, name: str, key_type: KeyCodec = KeyType.STRING):
        self.name = name
        self._ek, self._dk = _key_codec(key_type)
        self._id: Optional[int] = None

    def open(self) -> int:
        """Opens the map in the host now (it is opened on first use otherwise)."""
        if self._id is None:
            self._id = _broadcast_call(_bs.open_map, self.name)
        return self._id

    def _decode_key(self, data: bytes) -> Any:
        return self._dk(data)

    def _decode(self, data: bytes) -> Any:
        try:
            return parse_json(data)
        except ValueError as e:
            raise BroadcastError(BroadcastError.Kind.DECODE,
                                 f"cannot decode a value of broadcast map `{self.name}`: {e}") from None

    def _read(self, key: Any) -> Optional[bytes]:
        """The bytes at ``key``, or None; within a keyed batch, asked of the host once."""
        mid, k = self.open(), self._ek(key)
        keyed = _current_event is not None
        if keyed and (mid, k) in _batch_reads:
            return _batch_reads[(mid, k)]
        data = _broadcast_call(_bs.get, mid, k)
        if keyed:
            _batch_reads[(mid, k)] = data
        return data

    def get(self, key: Any, default: Any = None) -> Any:
        data = self._read(key)
        return default if data is None else self._decode(data)

    def __contains__(self, key: Any) -> bool:
        return self._read(key) is not None

    def put(self, key: Any, value: Any) -> None:
        mid, k, v = self.open(), self._ek(key), json_bytes(value)
        _broadcast_call(_bs.put, mid, k, v)

    def remove(self, key: Any) -> None:
        mid, k = self.open(), self._ek(key)
        _broadcast_call(_bs.remove, mid, k)

    def clear(self) -> None:
        mid = self.open()
        _broadcast_call(_bs.clear, mid)

    def _raw(self, page_size: int) -> Iterator[Tuple[bytes, bytes]]:
        mid = self.open()
        return _pages(lambda after, n: _broadcast_call(_bs.entries, mid, after, n), page_size)


# ------------------------------------------------------------------------------------------
# Lookups


class LookupStoreError(Exception):
    """Why a lookup failed: ``kind`` (a ``LookupStoreError.Kind``) and ``detail``. (The WIT
    calls it ``lookup-error``; ``LookupError`` would hide Python's own, which ``KeyError`` and
    ``IndexError`` derive from.)"""

    class Kind(enum.Enum):
        UNKNOWN_STORE = "unknown-store"
        FAILED = "failed"
        DECODE = "decode"

    def __init__(self, kind: "LookupStoreError.Kind", detail: str = ""):
        self.kind = kind
        self.detail = detail
        if kind is LookupStoreError.Kind.UNKNOWN_STORE:
            text = f"unknown lookup store: {detail}"
        elif kind is LookupStoreError.Kind.FAILED:
            text = f"lookup failed: {detail}"
        else:
            text = detail
        super().__init__(text)


def _lookup_error(err: Any) -> LookupStoreError:
    name, detail = _variant(err)
    return LookupStoreError(LookupStoreError.Kind(name), detail)


class LookupStore:
    """A lookup store the pipeline declares as ``[lookup.<name>]``."""

    def __init__(self, name: str):
        self.name = name

    def request(self, key: str) -> Tuple[str, str]:
        """A (store, key) request for ``plan_lookups``."""
        return (self.name, str(key))

    def get(self, key: str) -> Optional[bytes]:
        """The value's bytes, or None if the store has no such key. Raises LookupStoreError."""
        try:
            return _lookup.get(self.name, key)
        except Err as e:
            raise _lookup_error(e.value) from None

    def get_json(self, key: str) -> Any:
        """The value parsed as JSON, or None."""
        data = self.get(key)
        if data is None:
            return None
        try:
            return parse_json(data)
        except ValueError as e:
            raise LookupStoreError(LookupStoreError.Kind.DECODE,
                              f"value of `{key}` in store `{self.name}` is not the JSON expected: {e}") from None

    def get_many(self, keys: Iterable[str]) -> List[Union[Optional[bytes], LookupStoreError]]:
        """One result per key, in order: the bytes, None, or a LookupStoreError (not raised)."""
        return [_lookup_error(r.value) if isinstance(r, Err) else r.value
                for r in _lookup.get_many(self.name, list(keys))]


# ------------------------------------------------------------------------------------------
# Exporting a plugin

#: The reason every event is rejected with when ``init`` has not succeeded (as in Rust).
NOT_INITIALISED = "plugin not initialised"
#: The reason broadcast events are rejected with by a plugin without ``process_broadcast``.
NO_BROADCAST = ("this plugin does not handle broadcast events: give the plugin class a "
                "process_broadcast(self, event) method, or remove the pipeline's [broadcast] inputs")


class VisitAction(enum.Enum):
    """What ``visit`` does with an entry: keep it or remove it; ``SetValue`` replaces it."""

    KEEP = "keep"
    REMOVE = "remove"


class SetValue(NamedTuple):
    """A ``visit`` result that replaces the entry's value with these bytes (JSON)."""

    value: Union[bytes, str]


def _where(exc: BaseException) -> str:
    """`` (at app.py:42)``: the deepest line of the plugin's own code the exception came
    through (not this module's, not the standard library's), or ``""``."""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name != __file__ and "/lib/python" not in name and not name.startswith("<"):
            where = f" (at {name.rsplit('/', 1)[-1]}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where


def export(plugin_class: type):
    """Turns a plugin class into the five WIT export classes. The class is instantiated with
    no arguments and ``init(config)`` is called with the parsed configuration (``{}`` when
    none is set); an exception from ``init`` stops the pipeline with its message."""
    slot: List[Any] = [None]

    class Handler:
        def init(self, config: str) -> None:
            slot[0] = None
            try:
                parsed = json.loads(config) if config.strip() else {}
            except ValueError as e:
                raise Err(f"invalid plugin config: {e}")
            plugin = plugin_class()
            try:
                if hasattr(plugin, "init"):
                    plugin.init(parsed)
            except Exception as e:  # noqa: BLE001 - any failure is the operator's message
                raise Err(str(e))
            slot[0] = plugin

        def handle(self, events: List[_types.Event]) -> List[_types.Outcome]:
            global _current_event
            plugin = slot[0]
            if plugin is None:
                return [_types.Outcome_Reject(NOT_INITIALISED) for _ in events]
            outcomes = []
            try:
                for i, e in enumerate(events):
                    _current_event = i
                    event = Event(e.key, e.payload, e.subject, e.headers, e.timestamp_ms, e.sequence)
                    try:
                        outcome = plugin.process(event)
                    except Exception as exc:  # noqa: BLE001 - reject rather than trap
                        outcome = Outcome.reject(
                            f"uncaught exception: {type(exc).__name__}: {exc}{_where(exc)}"
                        )
                    outcomes.append(_lower_outcome(outcome))
            finally:
                _current_event = None
                _batch_reads.clear()
            return outcomes

    class BroadcastHandler:
        def handle_broadcast(self, events: List[_bh.BroadcastEvent]) -> list:
            plugin = slot[0]
            if plugin is None:
                return [Err(NOT_INITIALISED) for _ in events]
            handler = getattr(plugin, "process_broadcast", None)
            results: list = []
            for e in events:
                if handler is None:
                    results.append(Err(NO_BROADCAST))
                    continue
                event = BroadcastEvent(e.input, e.payload, subject=e.subject, headers=e.headers,
                                       timestamp_ms=e.timestamp_ms, sequence=e.sequence)
                try:
                    handler(event)
                    results.append(_ok)
                except Exception as exc:  # noqa: BLE001 - the message goes to the dead letter
                    results.append(Err(str(exc)))
            return results

    class LookupPlanner:
        def prepare(self, events: List[_types.Event]) -> List[List[_lp.LookupRequest]]:
            plugin = slot[0]
            plan = getattr(plugin, "plan_lookups", None)
            if plan is None:
                return [[] for _ in events]
            out = []
            for e in events:
                event = Event(e.key, e.payload, e.subject, e.headers, e.timestamp_ms, e.sequence)
                out.append([_lp.LookupRequest(s, k) for s, k in (plan(event) or [])])
            return out

    class KeyedVisitor:
        def visit(self, tag: str, state: str, entries: List[_kv.VisitedEntry]) -> List[_kv.VisitAction]:
            plugin = slot[0]
            visit = getattr(plugin, "visit", None)
            if visit is None:
                return [_kv.VisitAction_Keep() for _ in entries]
            out: List[_kv.VisitAction] = []
            # `entry` has .key, .map_key (or None), .value; `visit` returns a VisitAction or a
            # SetValue (None keeps the entry).
            for entry in entries:
                action = visit(tag, state, entry)
                if action is VisitAction.REMOVE:
                    out.append(_kv.VisitAction_Remove())
                elif isinstance(action, SetValue):
                    out.append(_kv.VisitAction_Set(_to_bytes(action.value)))
                else:
                    out.append(_kv.VisitAction_Keep())
            return out

    class Migrator:
        def migrate(self, previous_version: str) -> None:
            plugin = slot[0]
            if plugin is None:
                raise Err(NOT_INITIALISED)
            migrate = getattr(plugin, "migrate", None)
            if migrate is None:
                return
            try:
                migrate(previous_version)
            except Exception as e:  # noqa: BLE001 - the message is reported
                raise Err(str(e))

    return Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator


_ok = Ok(None)
