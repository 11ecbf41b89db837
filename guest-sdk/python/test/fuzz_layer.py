"""Fuzzing (atheris, natively under CPython) of the Python layer's decoders: the bytes a plugin
is given by events and by the host's state, read by ``guest-sdk/python/eddy.py``.

For any bytes:
- ``parse_json`` answers as ``json.loads`` of the UTF-8 text does (its integer shortcut
  included): the same value, or the same error with the same message;
- what it accepts, ``json_bytes`` writes byte for byte as the standard library's encoder with
  the layer's options does, or refuses with the same error, also after a failed encode; what
  it writes parses back to the same value;
- each map-key type decodes the bytes to a key or refuses them with a ``ValueError`` (a
  ``UnicodeDecodeError`` for strings), and a key that decodes encodes back to the same bytes;
  fixed-width keys order as their bytes do.

Run by ``scripts/guests/python.sh fuzz <corpus> <seconds>`` (from ``scripts/dev/fuzz.sh``). The
layer imports the component's bindings, which exist only inside a component: ``stand_in``
stands empty modules in for them, since none of the decoders calls the host.
"""

import json
import math
import sys

import stand_in

stand_in.bindings()
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


def outcome(f, *args):
    """What ``f(*args)`` gives: its value, or the type and text of the error it raises."""
    try:
        return f(*args)
    except (ValueError, TypeError, RecursionError) as e:
        return (type(e), str(e))


def check_json(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        got = outcome(eddy.parse_json, data)
        if got != (UnicodeDecodeError, str(e)):
            raise AssertionError(f"{data!r}: not UTF-8 ({e}), parse_json {got!r}")
        return
    want, got = outcome(json.loads, text), outcome(eddy.parse_json, data)
    if isinstance(want, tuple) or isinstance(got, tuple):
        # The same error, message and all; near the recursion limit, CPython before 3.12
        # counts the Python frames around the C scanner and encoder too, and the standard
        # library's path has more of them (the component's CPython, 3.14, does not).
        if RecursionError in {v[0] for v in (want, got) if isinstance(v, tuple)}:
            return
        if want != got:
            raise AssertionError(f"{data!r}: json.loads {want!r}, parse_json {got!r}")
        return
    if not same(want, got):
        raise AssertionError(f"{data!r}: json.loads {want!r}, parse_json {got!r}")
    # Written as the standard library's encoder with the layer's options writes it (errors
    # too: Infinity and NaN, from 1e999 or the NaN literal json.loads allows, have no JSON
    # form), and again after a failed encode of a list holding it.
    bad = [got, float("nan")]
    for value in (got, bad, bad, got):
        expected = outcome(lambda v: eddy._ENCODER.encode(v).encode(), value)
        written = outcome(eddy.json_bytes, value)
        if RecursionError in {v[0] for v in (expected, written) if isinstance(v, tuple)}:
            continue  # as above
        if expected != written:
            raise AssertionError(f"{data!r}: {value!r} written as {written!r}, not {expected!r}")
    written = outcome(eddy.json_bytes, got)
    if not isinstance(written, tuple) and not same(eddy.parse_json(written), got):
        raise AssertionError(f"{data!r}: written as {written!r}, read back differently")


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
