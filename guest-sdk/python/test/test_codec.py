"""The Python layer's JSON shortcuts against the standard library, natively (run by
``scripts/guests/python.sh test``, which the test command runs): ``parse_json`` reads what
``json.loads`` reads, raising its errors with its messages, and ``json_bytes`` writes what the
standard library's encoder with the layer's options writes, failing as it fails. The fuzzer
(``fuzz_layer.py``) checks the same on arbitrary bytes; these are the cases worth naming."""

import json
import unittest

import stand_in

stand_in.bindings()
import eddy  # noqa: E402

READ = [
    b'{"count":12,"sum_cents":456789,"max_cents":99999,"last_ts":1700000000000}',
    b'{"id":"tx-1","customer":"c-\\u00e9","tags":["a","b"],"nested":{"x":[1,2.5,-3e2,null,true]}}',
    b'"just a string"', b"12", b"012", b"-7", b"1.5", b"1e999", b"NaN", b"-Infinity", b"null",
    b"[]", b"{}", " {\"é\": \"ü\"}".encode(),
    b' {"a":1}', b'{"a":1} ', b'\n[1,2]\n',  # whitespace around the value
    b"\xef\xbb\xbf{}",  # a byte order mark, which json.loads refuses
    b"", b" ", b"{", b'{"a" 1}', b'{"a":1}x', b"[1,]", b"tru", b'"\\x"', b'{"a":1}{"b":2}',
    b"\xff\xfe", b'"\xc3"', b"[" * 100000,
]


def outcome(f, *args):
    try:
        return ("value", f(*args))
    except (ValueError, TypeError, RecursionError) as e:
        return (type(e), str(e))


class ParseJson(unittest.TestCase):
    def test_reads_and_refuses_as_json_loads_does(self):
        for data in READ:
            with self.subTest(data=data[:40]):
                try:
                    want = outcome(json.loads, data.decode("utf-8"))
                except UnicodeDecodeError as e:
                    want = (UnicodeDecodeError, str(e))
                got = outcome(eddy.parse_json, data)
                self.assertEqual(repr(got), repr(want))


class JsonBytes(unittest.TestCase):
    def encoded(self, value):
        return outcome(lambda v: eddy._ENCODER.encode(v).encode(), value)

    def test_writes_as_the_standard_encoder_does(self):
        class Custom:
            pass

        circular = [1]
        circular.append(circular)
        values = [
            {"count": 13, "sum_cents": 469134, "max_cents": 99999, "last_ts": 1700000123456},
            {"é": "ü\n\t\"\\", "n": None, "b": [True, False], "f": 0.1, "big": 2**70},
            "text", "", 5, -5, 2.5, None, True, [], {}, {1: "int key", None: "null key"},
            ("tuple", 1), 1e308,
            float("nan"), float("inf"), [1, float("-inf")], {"s": {1, 2}}, Custom(), circular,
            {(1, 2): "a tuple key"},
        ]
        for value in values:
            with self.subTest(value=repr(value)[:40]):
                self.assertEqual(outcome(eddy.json_bytes, value), self.encoded(value))

    def test_a_failed_encode_does_not_fail_the_next(self):
        inner = {"a": 1}
        outer = [inner, float("nan")]
        failed = outcome(eddy.json_bytes, outer)
        self.assertEqual(failed[0], ValueError)
        self.assertIn("Out of range float values", failed[1])
        # The encoder was inside `outer` when it gave up: encoding it again must not see a
        # cycle that is not there.
        outer[1] = 2
        self.assertEqual(eddy.json_bytes(outer), b'[{"a":1},2]')
        self.assertEqual(eddy.json_bytes(inner), b'{"a":1}')

    def test_an_encode_from_inside_an_encode_has_its_own_record_of_cycles(self):
        inner_results = []

        class Reentrant(dict):
            # The C encoder asks a dict subclass for its items: code that runs mid-encode.
            def items(self):
                if not inner_results:  # once: the nested encode asks for the items again
                    inner_results.append(None)
                    inner_results[0] = eddy.json_bytes(outer)
                return super().items()

        outer = [1]
        outer.append(Reentrant(a=2))
        want = self.encoded(outer)
        self.assertEqual(want, ("value", b'[1,{"a":2}]'))
        inner_results.clear()
        self.assertEqual(outcome(eddy.json_bytes, outer), want)
        # The nested encode of `outer` (which the outer one is inside) is no cycle either.
        self.assertEqual(inner_results, [b'[1,{"a":2}]'])


if __name__ == "__main__":
    unittest.main()
