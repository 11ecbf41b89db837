"""{{name}}: counts the events of each key and emits each payload (a JSON object) with the
running count added as ``count``.

Build:  ./build.sh (writes {{name}}.wasm)
Try:    eddy test {{name}}.wasm events.jsonl --dump-state
Guide:  guest-sdk/python/README.md
"""

import eddy
from eddy import Outcome, Output, ValueState


class Plugin:
    def init(self, config):
        """Called once per instance with the pipeline's ``plugin.config`` (parsed, ``{}`` when
        unset). An exception here stops the pipeline with its message."""
        self.count = ValueState("count")

    def process(self, event):
        """Called once per event; state handles act on this event's key."""
        try:
            payload = event.json()
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return Outcome.reject(f"{{name}}: payload is not a JSON object: {e}")
        try:
            payload["count"] = self.count.update(lambda n: (n or 0) + 1)
        except eddy.StateError as e:
            return Outcome.reject(f"{{name}}: {e}")
        return Outcome.emit_one(Output.json(payload))


Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator = eddy.export(Plugin)
