// Package plugin is state-tour in Go: a test plugin that calls every keyed-state write and read
// of the Go layer, so that the layer's own import declarations (guest-sdk/go/eddy/imports.go)
// are each exercised against the real host. tests/tests/languages.rs runs it under `eddy test`
// and checks what it reports and what the host stored.
//
// Input: a JSON object per event, by its "op":
//
//	{"op": "write", "n": N, "items": [S...]}
//	    value `value` := N; values `short`, `mid` and `long` := N with their own TTLs of 1 ms,
//	    3 s and one hour; map `map`: "n" := N, and "short", "mid", "long" := N with the same
//	    TTLs; list `list`: Add(first item), AddAll(the other items). It then waits until the
//	    host's clock has moved 5 ms past the write, so that the 1 ms entries have expired before
//	    the next event. Emits {"wrote": N}.
//	{"op": "wait", "ms": M}            waits M ms of the host's clock (keep M under the CPU
//	                                   budget per event, 100 ms by default); emits nothing.
//	{"op": "update", "items": [S...]}  list `list` := items (Update).
//	{"op": "read"}                     emits the report below.
//	{"op": "clear"}                    clears `value`, `map` and `list`, then emits the report.
//
// The report: {"value": N|null, "short": N|null, "mid": N|null, "long": N|null,
// "map": [{"k": key, "v": N}...] (key order), "list": [S...]}.
//
// Build: bash scripts/guests/go.sh build plugins/state-tour-go out.wasm
package plugin

import (
	"wit_component/eddy"
)

const (
	hourMs = 3_600_000
	midMs  = 3_000
)

type request struct {
	Op    string   `json:"op"`
	N     uint64   `json:"n,omitempty"`
	Items []string `json:"items,omitempty"`
	Ms    uint64   `json:"ms,omitempty"`
}

type entry struct {
	K string `json:"k"`
	V uint64 `json:"v"`
}

type report struct {
	Value *uint64  `json:"value"`
	Short *uint64  `json:"short"`
	Mid   *uint64  `json:"mid"`
	Long  *uint64  `json:"long"`
	Map   []entry  `json:"map"`
	List  []string `json:"list"`
}

type written struct {
	Wrote uint64 `json:"wrote"`
}

type stateTour struct {
	value, short, mid, long *eddy.ValueState[uint64]
	m                       *eddy.MapState[string, uint64]
	list                    *eddy.ListState[string]
}

func init() {
	eddy.Register(&stateTour{})
}

func (p *stateTour) Init(config eddy.Config) error {
	p.value = eddy.NewValueState[uint64]("value")
	p.short = eddy.NewValueState[uint64]("short")
	p.mid = eddy.NewValueState[uint64]("mid")
	p.long = eddy.NewValueState[uint64]("long")
	p.m = eddy.NewMapState[string, uint64]("map")
	p.list = eddy.NewListState[string]("list")
	return nil
}

func (p *stateTour) Process(event *eddy.Event) eddy.Outcome {
	var req request
	if err := event.JSON(&req); err != nil {
		return eddy.Rejectf("state-tour: %v", err)
	}
	var err error
	switch req.Op {
	case "write":
		err = p.write(req)
		if err == nil {
			return emitJSON(written{req.N})
		}
	case "update":
		err = p.list.Update(req.Items)
		if err == nil {
			return eddy.Drop()
		}
	case "wait":
		waitMs(req.Ms)
		return eddy.Drop()
	case "read":
	case "clear":
		if err = p.value.Clear(); err == nil {
			if err = p.m.Clear(); err == nil {
				err = p.list.Clear()
			}
		}
	default:
		return eddy.Rejectf("state-tour: unknown op %q", req.Op)
	}
	if err != nil {
		return eddy.Rejectf("state-tour: %v", err)
	}
	r, err := p.report()
	if err != nil {
		return eddy.Rejectf("state-tour: %v", err)
	}
	return emitJSON(r)
}

func (p *stateTour) write(req request) error {
	n := req.N
	for _, step := range []func() error{
		func() error { return p.value.Set(n) },
		func() error { return p.short.SetWithTTL(n, 1) },
		func() error { return p.mid.SetWithTTL(n, midMs) },
		func() error { return p.long.SetWithTTL(n, hourMs) },
		func() error { return p.m.Put("n", n) },
		func() error { return p.m.PutWithTTL("short", n, 1) },
		func() error { return p.m.PutWithTTL("mid", n, midMs) },
		func() error { return p.m.PutWithTTL("long", n, hourMs) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	if len(req.Items) > 0 {
		if err := p.list.Add(req.Items[0]); err != nil {
			return err
		}
		if err := p.list.AddAll(req.Items[1:]); err != nil {
			return err
		}
	}
	// Let the 1 ms entries expire before the next event, whichever clock reading the host
	// stamps a batch with.
	waitMs(5)
	return nil
}

// waitMs spins until the host's clock has moved ms milliseconds; bounded, so that a stopped
// clock cannot hang the test.
func waitMs(ms uint64) {
	start := eddy.NowMs()
	for i := 0; i < 1_000_000_000 && eddy.NowMs() < start+ms; i++ {
	}
}

func (p *stateTour) report() (report, error) {
	var r report
	for _, s := range []struct {
		state *eddy.ValueState[uint64]
		into  **uint64
	}{{p.value, &r.Value}, {p.short, &r.Short}, {p.mid, &r.Mid}, {p.long, &r.Long}} {
		v, found, err := s.state.Get()
		if err != nil {
			return r, err
		}
		if found {
			*s.into = &v
		}
	}
	entries, err := p.m.Entries(nil, 100)
	if err != nil {
		return r, err
	}
	r.Map = []entry{}
	for _, e := range entries {
		r.Map = append(r.Map, entry{e.Key, e.Value})
	}
	if r.List, err = p.list.Get(); err != nil {
		return r, err
	}
	if r.List == nil {
		r.List = []string{}
	}
	return r, nil
}

func emitJSON(v any) eddy.Outcome {
	out, err := eddy.JSONOutput(v)
	if err != nil {
		return eddy.Rejectf("state-tour: %v", err)
	}
	return eddy.Emit(out)
}
