// {{name}}: counts the events of each key and emits each payload (a JSON object) with the
// running count added as `count`.
//
// Build:  ./build.sh (writes {{name}}.wasm)
// Try:    eddy test {{name}}.wasm events.jsonl --dump-state
// Guide:  guest-sdk/js/README.md

import { Outcome, Output, ValueState, isObject, exportPlugin } from "eddy-sdk";

class Plugin {
  // Called once per instance with the pipeline's `plugin.config` (parsed, `{}` when unset).
  // Throwing here stops the pipeline with the message.
  init(config) {
    this.count = new ValueState("count");
  }

  // Called once per event; state handles act on this event's key.
  process(event) {
    let payload;
    try {
      payload = event.json();
      if (!isObject(payload)) throw new Error("not an object");
    } catch (e) {
      return Outcome.reject(`{{name}}: payload is not a JSON object: ${e.message}`);
    }
    try {
      payload.count = this.count.update((n) => (n ?? 0) + 1);
    } catch (e) {
      return Outcome.reject(`{{name}}: ${e.message}`);
    }
    return Outcome.emitOne(Output.json(payload));
  }
}

export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } =
  exportPlugin(Plugin);
