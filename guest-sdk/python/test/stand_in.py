"""Empty modules standing in for the component's bindings, so that ``eddy.py`` imports natively
(for the fuzzer and the codec tests): the bindings exist only inside a component, and none of
the code these run calls the host."""

import os
import sys
import types


def bindings() -> None:
    """Registers the stand-ins and puts the layer (``..``) on the path."""

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
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
