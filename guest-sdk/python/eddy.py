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

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

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
    "BroadcastError", "BroadcastEvent", "BroadcastMap", "Event", "ListState", "LookupError",
    "LookupStore", "MapState", "Outcome", "Output", "StateError", "Ttl", "ValueState",
    "deny_unknown_fields", "export", "is_u64", "json_bytes", "log", "now_ms", "parse_json",
]

# ------------------------------------------------------------------------------------------
# JSON


# One encoder for every call: ``json.dumps`` with these options would build a new JSONEncoder
# each time, which costs as much as the encoding of a small value.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode = _ENCODER.encode


def json_bytes(value: Any) -> bytes:
    """The compact JSON encoding of ``value`` in UTF-8: the shared state encoding."""
    if type(value) is int:  # the common list element: digits, as the encoder writes them
        return str(value).encode()
    return _encode(value).encode()


def parse_json(data: Union[bytes, str]) -> Any:
    """Parses JSON from UTF-8 bytes (or a string). Raises ``ValueError`` on bad input."""
    if type(data) is bytes and data.isdigit() and (len(data) == 1 or data[0] != 0x30):
        return int(data)  # a plain non-negative integer, read as json.loads would
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    return json.loads(data)


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
    """One event of a broadcast input; ``input`` is the input's name."""

    __slots__ = ("input",)

    def __init__(self, input: str, payload: bytes, **kw: Any):
        super().__init__(b"", payload, **kw)
        self.input = input


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
    """What became of an event. Build with the static methods."""

    __slots__ = ("kind", "outputs", "reason")

    def __init__(self, kind: str, outputs: Optional[List[Output]] = None, reason: str = ""):
        self.kind = kind
        self.outputs = outputs or []
        self.reason = reason

    @staticmethod
    def emit(outputs: Iterable[Output]) -> "Outcome":
        return Outcome("emit", list(outputs))

    @staticmethod
    def emit_one(output: Output) -> "Outcome":
        return Outcome("emit", [output])

    @staticmethod
    def emit_json(value: Any) -> "Outcome":
        try:
            return Outcome.emit_one(Output.json(value))
        except (TypeError, ValueError) as e:
            return Outcome.reject(f"cannot encode output as JSON: {e}")

    @staticmethod
    def drop() -> "Outcome":
        return Outcome("drop")

    @staticmethod
    def reject(reason: str) -> "Outcome":
        return Outcome("reject", reason=str(reason))

    def __repr__(self) -> str:
        return f"Outcome({self.kind!r}, {self.outputs!r}, {self.reason!r})"


def _lower_outcome(o: Any) -> _types.Outcome:
    if isinstance(o, Output):
        o = Outcome.emit_one(o)
    if not isinstance(o, Outcome):
        return _types.Outcome_Reject("plugin returned something that is not an Outcome")
    if o.kind == "emit":
        return _types.Outcome_Emit([_types.Output(x.subject, x.headers, x.payload) for x in o.outputs])
    if o.kind == "drop":
        return _types.Outcome_Drop()
    return _types.Outcome_Reject(o.reason)


# ------------------------------------------------------------------------------------------
# Keyed state


class StateError(Exception):
    """Why a state call failed. ``kind``: the host's error name, or "decode"/"encode"."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        k, m = self.kind, self.detail
        if k == "unknown-state":
            return "state is not open in this plugin instance"
        if k == "wrong-kind":
            return f"state exists with another kind: {m}"
        if k == "no-such-event":
            return "no event is being processed: keyed state is only reachable from `process`"
        if k == "read-only":
            return f"state is read-only here: {m}"
        if k == "storage":
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
        raise StateError(*_variant(e.value)) from None


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


#: Map key encodings, as (encode, decode): the same bytes as the Rust SDK's ``MapKey``.
KEY_TYPES = {
    "string": (lambda k: k.encode("utf-8"), lambda b: bytes(b).decode("utf-8")),
    "bytes": (lambda k: bytes(k), lambda b: bytes(b)),
    "u32": _fixed_int(4, False),
    "u64": _fixed_int(8, False),
    "i32": _fixed_int(4, True),
    "i64": _fixed_int(8, True),
}


class _StateHandle:
    def __init__(self, name: str, kind: _ks.StateKind, ttl: Optional[Ttl]):
        self.name = name
        self.kind = kind
        self.ttl = ttl
        self.id: Optional[int] = None

    def open(self) -> int:
        """Opens the state in the host now (it is opened on first use otherwise)."""
        if self.id is None:
            ttl = self.ttl._wit() if self.ttl is not None else None
            self.id = _state_call(_ks.open, self.name, self.kind, ttl)
        return self.id

    def _target(self) -> Tuple[int, int]:
        if _current_event is None:
            raise StateError("no-such-event")
        sid = self.id
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
            raise StateError("encode", f"cannot encode a value of state `{self.name}`: {e}") from None

    def _decode(self, data: bytes) -> Any:
        try:
            return parse_json(data)
        except ValueError as e:
            raise StateError("decode", f"cannot decode a value of state `{self.name}`: {e}") from None


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


class MapState(_StateHandle):
    """Entries key → JSON value per key, ordered by key bytes. ``key_type``: "string",
    "bytes", "u32", "u64", "i32", "i64" or an (encode, decode) pair."""

    def __init__(self, name: str, key_type: Any = "string", ttl: Optional[Ttl] = None):
        super().__init__(name, _ks.StateKind.MAP, ttl)
        self._ek, self._dk = KEY_TYPES[key_type] if isinstance(key_type, str) else key_type

    def _key(self, key: Any) -> bytes:
        try:
            return self._ek(key)
        except (TypeError, ValueError, AttributeError) as e:
            raise StateError("encode", f"cannot encode a key of state `{self.name}`: {e}") from None

    def _unkey(self, data: bytes) -> Any:
        try:
            return self._dk(data)
        except ValueError as e:
            raise StateError("decode", f"cannot decode a key of state `{self.name}`: {e}") from None

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

    def contains(self, key: Any) -> bool:
        sid, ev = self._target()
        k = self._key(key)
        return _state_call(_ks.map_contains, sid, ev, k)

    def is_empty(self) -> bool:
        sid, ev = self._target()
        return _state_call(_ks.map_is_empty, sid, ev)

    def clear(self) -> None:
        sid, ev = self._target()
        _state_call(_ks.map_clear, sid, ev)

    def entries(self, page_size: int = 256) -> List[Tuple[Any, Any]]:
        """Every entry as (key, value) in key order (fetched from the host in pages)."""
        sid, ev = self._target()
        out: List[Tuple[Any, Any]] = []
        after: Optional[bytes] = None
        while True:
            page = _state_call(_ks.map_entries, sid, ev, after, page_size)
            out.extend((self._unkey(k), self._decode(v)) for k, v in page)
            if len(page) < page_size:
                return out
            after = page[-1][0]

    def keys(self) -> List[Any]:
        return [k for k, _ in self.entries()]


class ListState(_StateHandle):
    """A list of JSON values per key, oldest first (Flink ListState)."""

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


# ------------------------------------------------------------------------------------------
# Broadcast state


class BroadcastError(Exception):
    """Why a broadcast state call failed."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        self.detail = detail
        if kind == "unknown-map":
            text = "broadcast map is not open"
        elif kind == "read-only":
            text = f"broadcast state is read-only here: {detail}"
        elif kind == "storage":
            text = f"broadcast storage failed: {detail}"
        else:
            text = detail
        super().__init__(text)


def _broadcast_call(f: Callable[..., Any], *args: Any) -> Any:
    """Calls the broadcast-state import ``f(*args)``; a WIT error is raised as BroadcastError."""
    try:
        return f(*args)
    except Err as e:
        raise BroadcastError(*_variant(e.value)) from None


class BroadcastMap:
    """A named map shared by every key, written only from ``process_broadcast``. Values are
    JSON; keys are encoded as for MapState (default "string")."""

    def __init__(self, name: str, key_type: Any = "string"):
        self.name = name
        self._ek, self._dk = KEY_TYPES[key_type] if isinstance(key_type, str) else key_type
        self.id: Optional[int] = None

    def open(self) -> int:
        if self.id is None:
            self.id = _broadcast_call(_bs.open_map, self.name)
        return self.id

    def _decode(self, data: bytes) -> Any:
        try:
            return parse_json(data)
        except ValueError as e:
            raise BroadcastError("decode", f"cannot decode a value of broadcast map `{self.name}`: {e}") from None

    def get(self, key: Any, default: Any = None) -> Any:
        mid, k = self.open(), self._ek(key)
        keyed = _current_event is not None
        if keyed and (mid, k) in _batch_reads:
            data = _batch_reads[(mid, k)]
        else:
            data = _broadcast_call(_bs.get, mid, k)
            if keyed:
                _batch_reads[(mid, k)] = data
        return default if data is None else self._decode(data)

    def put(self, key: Any, value: Any) -> None:
        mid, k, v = self.open(), self._ek(key), json_bytes(value)
        _broadcast_call(_bs.put, mid, k, v)

    def remove(self, key: Any) -> None:
        mid, k = self.open(), self._ek(key)
        _broadcast_call(_bs.remove, mid, k)

    def clear(self) -> None:
        mid = self.open()
        _broadcast_call(_bs.clear, mid)

    def entries(self, page_size: int = 256) -> List[Tuple[Any, Any]]:
        mid = self.open()
        out: List[Tuple[Any, Any]] = []
        after: Optional[bytes] = None
        while True:
            page = _broadcast_call(_bs.entries, mid, after, page_size)
            out.extend((self._dk(k), self._decode(v)) for k, v in page)
            if len(page) < page_size:
                return out
            after = page[-1][0]


# ------------------------------------------------------------------------------------------
# Lookups


class LookupError(Exception):  # noqa: A001 - mirrors the WIT name
    """Why a lookup failed."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        self.detail = detail
        if kind == "unknown-store":
            text = f"unknown lookup store: {detail}"
        elif kind == "failed":
            text = f"lookup failed: {detail}"
        else:
            text = detail
        super().__init__(text)


class LookupStore:
    """A lookup store the pipeline declares as ``[lookup.<name>]``."""

    def __init__(self, name: str):
        self.name = name

    def request(self, key: str) -> Tuple[str, str]:
        """A (store, key) request for ``plan_lookups``."""
        return (self.name, str(key))

    def get(self, key: str) -> Optional[bytes]:
        """The value's bytes, or None if the store has no such key. Raises LookupError."""
        try:
            return _lookup.get(self.name, key)
        except Err as e:
            raise LookupError(*_variant(e.value)) from None

    def get_json(self, key: str) -> Any:
        """The value parsed as JSON, or None."""
        data = self.get(key)
        if data is None:
            return None
        try:
            return parse_json(data)
        except ValueError as e:
            raise LookupError("decode", f"value of `{key}` in store `{self.name}` is not the JSON expected: {e}") from None

    def get_many(self, keys: List[str]) -> List[Union[Optional[bytes], LookupError]]:
        """One result per key, in order: the bytes, None, or a LookupError (not raised)."""
        out: List[Union[Optional[bytes], LookupError]] = []
        for r in _lookup.get_many(self.name, keys):
            if isinstance(r, Err):
                out.append(LookupError(*_variant(r.value)))
            else:
                out.append(r.value)
        return out


# ------------------------------------------------------------------------------------------
# Exporting a plugin

#: The reason every event is rejected with when ``init`` has not succeeded (as in Rust).
NOT_INITIALISED = "plugin not initialised"
#: The reason broadcast events are rejected with by a plugin without ``process_broadcast``.
NO_BROADCAST = ("this plugin does not handle broadcast events: implement Processor::process_broadcast, "
                "or remove the pipeline's [broadcast] inputs")


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
                        outcome = Outcome.reject(f"uncaught exception: {type(exc).__name__}: {exc}")
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
            # `entry` has .key, .map_key (or None), .value; return "keep", "remove" or
            # ("set", bytes).
            for entry in entries:
                action = visit(tag, state, entry)
                if action == "remove":
                    out.append(_kv.VisitAction_Remove())
                elif isinstance(action, tuple) and action[0] == "set":
                    out.append(_kv.VisitAction_Set(_to_bytes(action[1])))
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
