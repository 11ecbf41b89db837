// Package plugin is {{name}}, an Eddy plugin in Go.
//
// It counts the events of each key in the value state `count` and emits each payload (a JSON
// object) with the field `count` added: the key's events so far, this one included.
//
// Build: bash scripts/guests/go.sh build <this directory> {{name}}.wasm
// Try:   eddy test {{name}}.wasm events.jsonl --dump-state
// Layer: guest-sdk/go/eddy and guest-sdk/go/README.md
package plugin

import (
	"encoding/json"

	"wit_component/eddy"
)

type countPerKey struct {
	count *eddy.ValueState[uint64]
}

func init() {
	eddy.Register(&countPerKey{})
}

// Init is called once with the pipeline's plugin.config ("{}" when unset).
func (p *countPerKey) Init(config eddy.Config) error {
	p.count = eddy.NewValueState[uint64]("count")
	return nil
}

// Process is called for every event; keyed state reads and writes this event's key.
func (p *countPerKey) Process(event *eddy.Event) eddy.Outcome {
	var payload map[string]json.RawMessage
	if err := json.Unmarshal(event.Payload, &payload); err != nil || payload == nil {
		return eddy.Rejectf("{{name}}: payload is not a JSON object: %v", err)
	}
	n, _, err := p.count.Get()
	if err != nil {
		return eddy.Rejectf("{{name}}: %v", err)
	}
	n++
	if err := p.count.Set(n); err != nil {
		return eddy.Rejectf("{{name}}: %v", err)
	}
	payload["count"], _ = eddy.Marshal(n)
	out, err := eddy.JSONOutput(payload) // a map: members come out sorted by name
	if err != nil {
		return eddy.Rejectf("{{name}}: %v", err)
	}
	return eddy.Emit(out)
}
