// Package plugin is dedupe-filter in Go: it drops transactions whose id was already seen for
// the same key.
//
// The same plugin as plugins/dedupe-filter (Rust), whose module documentation is the
// specification: optional config {"ttl_ms": N} (N > 0), map state `seen` (id as UTF-8 key ->
// the transaction's integer `ts`, or the event's timestamp), the first event of an id emitted
// unchanged and the later ones dropped.
//
// Build: bash scripts/guests/go.sh build plugins/dedupe-filter-go out.wasm
package plugin

import (
	"encoding/json"
	"errors"
	"strconv"

	"wit_component/eddy"
)

type settings struct {
	TTLMs *uint64 `json:"ttl_ms"`
}

type transaction struct {
	ID string          `json:"id"`
	Ts json.RawMessage `json:"ts,omitempty"`
}

type dedupeFilter struct {
	seen *eddy.MapState[string, uint64]
}

func init() {
	eddy.Register(&dedupeFilter{})
}

func (p *dedupeFilter) Init(config eddy.Config) error {
	var s settings
	if err := config.Parse(&s); err != nil {
		return err
	}
	switch {
	case s.TTLMs == nil:
		p.seen = eddy.NewMapState[string, uint64]("seen")
	case *s.TTLMs == 0:
		return errors.New("invalid plugin config: `ttl_ms` must be more than 0")
	default:
		p.seen = eddy.NewMapState[string, uint64]("seen", eddy.TTL{Ms: *s.TTLMs})
	}
	return nil
}

func (p *dedupeFilter) Process(event *eddy.Event) eddy.Outcome {
	var tx transaction
	if err := event.JSON(&tx); err != nil {
		return eddy.Rejectf("dedupe-filter: payload is not a JSON object with a string \"id\": %v", err)
	}
	known, err := p.seen.Contains(tx.ID)
	if err != nil {
		return eddy.Rejectf("dedupe-filter: %v", err)
	}
	if known {
		return eddy.Drop()
	}
	// An integer `ts` (a non-negative integer literal that fits in u64), else the timestamp.
	ts, err := strconv.ParseUint(string(tx.Ts), 10, 64)
	if err != nil {
		ts = event.TimestampMs
	}
	if err := p.seen.Put(tx.ID, ts); err != nil {
		return eddy.Rejectf("dedupe-filter: %v", err)
	}
	return eddy.Emit(eddy.NewOutput(event.Payload))
}
