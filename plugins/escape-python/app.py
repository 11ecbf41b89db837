"""escape-python: checks the sandbox from inside a Python component.

For every event, ``process`` tries to read /etc/hostname, list ``/``, connect a TCP socket to
127.0.0.1:4222 and count the environment variables, and emits a JSON report::

    {"file": "...", "dir": "...", "socket": "...", "env_vars": N}

Each of the first three is ``"read N bytes"`` / ``"listed N entries"`` / ``"connected"`` on
success, or ``"denied: <error>"``. Same shape as ``escape_report`` in plugins/chaos. Built
without ``--stub-wasi`` so the attempts reach the host's (closed) WASI, which must deny them.
"""

import os
import socket

import eddy
from eddy import Outcome


def _denied(e):
    return f"denied: {type(e).__name__}: {e}"


def escape_report():
    try:
        with open("/etc/hostname", encoding="utf-8", errors="replace") as f:
            file = f"read {len(f.read())} bytes"
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        file = _denied(e)
    try:
        directory = f"listed {len(os.listdir('/'))} entries"
    except Exception as e:  # noqa: BLE001
        directory = _denied(e)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(("127.0.0.1", 4222))
            sock = "connected"
        finally:
            s.close()
    except Exception as e:  # noqa: BLE001
        sock = _denied(e)
    try:
        env_vars = len(os.environ)
    except Exception:  # noqa: BLE001
        env_vars = -1
    return {"file": file, "dir": directory, "socket": sock, "env_vars": env_vars}


class Escape:
    def init(self, config):
        pass

    def process(self, event):
        return Outcome.emit_json(escape_report())


Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator = eddy.export(Escape)
