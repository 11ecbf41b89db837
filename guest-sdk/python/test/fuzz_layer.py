"""Fuzzing (atheris, natively under CPython) of the Python layer's decoders: the bytes a plugin
is given by events and by the host's state, read by ``guest-sdk/python/eddy.py``.

For any bytes:
- ``parse_json`` answers as ``json.loads`` of the UTF-8 text does (its integer shortcut
  included): the same value, or a ``ValueError`` where that refuses;
- what it accepts, ``json_bytes`` writes as JSON that parses back to the same value;
- each map-key type decodes the bytes to a key or refuses them with a ``ValueError`` (a
  ``UnicodeDecodeError`` for strings), and a key that decodes encodes back to the same bytes;
  fixed-width keys order as their bytes do.

Run by ``scripts/guests/python.sh fuzz <corpus> <seconds>`` (from ``scripts/dev/fuzz.sh``). The
layer imports the component's bindings, which exist only inside a component: this harness
stands empty modules in for them, since none of the decoders calls the host.
"""

import json
import math
import os
import sys
import types


def _stand_in_bindings() -> None:
    class _Anything:
        def __getattr__(self, name):
            return _Anything()

        def __call__(self, *args, **kwargs):
            return _Anything()

    def module(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__getattr__ = lambda attr: _Anything()  # type: ignore[attr-defined]
        sys.modules[name] = m
        return m

    module("componentize_py_types")
    for package in ("wit_world", "wit_world.exports", "wit_world.imports"):
        module(package)
    for name in ("broadcast_handler", "keyed_visitor", "lookup_planner"):
        module(f"wit_world.exports.{name}")
    for name in ("broadcast_state", "clock", "keyed_state", "log", "lookup", "types"):
        module(f"wit_world.imports.{name}")


_stand_in_bindings()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import atheris  # noqa: E402

with atheris.instrument_imports():
    import eddy  # noqa: E402

KEY_TYPES = list(eddy.KeyType)
FIXED = {eddy.KeyType.U32: 4, eddy.KeyType.I32: 4, eddy.KeyType.U64: 8, eddy.KeyType.I64: 8}


def same(a, b) -> bool:
    """JSON equality where 1 and 1.0 differ, as they do on the wire, and NaN (which json.loads
    reads from the literal ``NaN``) equals itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def check_json(data: bytes) -> None:
    try:
        want = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        want = ValueError
    try:
        got = eddy.parse_json(data)
    except (ValueError, RecursionError):
        got = ValueError
    if want is ValueError or got is ValueError:
        if want is not got:
            raise AssertionError(f"{data!r}: json.loads {want!r}, parse_json {got!r}")
        return
    if not same(want, got):
        raise AssertionError(f"{data!r}: json.loads {want!r}, parse_json {got!r}")
    try:
        written = eddy.json_bytes(got)
    except ValueError:
        # Infinity and NaN (from 1e999 or the NaN literal json.loads allows) have no JSON form:
        # the encoder refuses them rather than writing what no other language reads.
        return
    back = eddy.parse_json(written)
    if not same(back, got):
        raise AssertionError(f"{data!r}: written as {written!r}, read back as {back!r}")


def check_keys(data: bytes) -> None:
    half = len(data) // 2
    a, b = data[:half], data[half:]
    for key_type in KEY_TYPES:
        encode, decode = eddy._key_codec(key_type)
        try:
            k = decode(a)
        except ValueError as e:
            if not str(e):
                raise AssertionError(f"{key_type}: {a!r} refused without a reason")
            continue
        if encode(k) != bytes(a):
            raise AssertionError(f"{key_type}: {a!r} decoded to {k!r}, encoded as {encode(k)!r}")
        width = FIXED.get(key_type)
        if width and len(b) == width:
            kb = decode(b)
            by_bytes = (bytes(a) > bytes(b)) - (bytes(a) < bytes(b))
            by_value = (k > kb) - (k < kb)
            if by_bytes != by_value:
                raise AssertionError(f"{key_type}: {a!r}={k}, {b!r}={kb} order differently")


def test_one_input(data: bytes) -> None:
    check_json(data)
    check_keys(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
