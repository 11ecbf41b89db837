// Package plugin is fraud-enrich in Go: it adds per-customer statistics and a risk score to
// card transactions.
//
// The same plugin as plugins/fraud-enrich (Rust), whose module documentation is the
// specification: config {"flag_threshold", "profiles", "merchants"}, keyed state `stats`
// (value) and `recent` (list of the last 5 amounts), broadcast map `category_limits` fed by
// rules {"category", "limit_cents" | "remove"}, lookups of the customer's profile and the
// merchant's record, and the enriched output with the header `Eddy-Risk`.
//
// Build: bash scripts/guests/go.sh build plugins/fraud-enrich-go out.wasm
package plugin

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"wit_component/eddy"
)

const recentLen = 5

type settings struct {
	FlagThreshold *uint32 `json:"flag_threshold"`
	Profiles      *string `json:"profiles"`
	Merchants     *string `json:"merchants"`
}

type rule struct {
	Category   string  `json:"category"`
	LimitCents *uint64 `json:"limit_cents"`
	Remove     bool    `json:"remove,omitempty"`
}

type transaction struct {
	ID          string `json:"id"`
	Customer    string `json:"customer"`
	AmountCents uint64 `json:"amount_cents"`
	Merchant    string `json:"merchant"`
	Category    string `json:"category"`
	Ts          uint64 `json:"ts"`
}

// stats is the `stats` state.
type stats struct {
	Count    uint64 `json:"count"`
	SumCents uint64 `json:"sum_cents"`
	MaxCents uint64 `json:"max_cents"`
	LastTs   uint64 `json:"last_ts"`
}

// enriched is the output, in this field order.
type enriched struct {
	ID                 string          `json:"id"`
	Customer           string          `json:"customer"`
	AmountCents        uint64          `json:"amount_cents"`
	Merchant           string          `json:"merchant"`
	Category           string          `json:"category"`
	Ts                 uint64          `json:"ts"`
	CustomerCount      uint64          `json:"customer_count"`
	CustomerSumCents   uint64          `json:"customer_sum_cents"`
	CustomerAvgCents   uint64          `json:"customer_avg_cents"`
	CustomerMaxCents   uint64          `json:"customer_max_cents"`
	PreviousTs         *uint64         `json:"previous_ts"`
	RecentCents        []uint64        `json:"recent_cents"`
	CategoryLimitCents *uint64         `json:"category_limit_cents"`
	Profile            json.RawMessage `json:"profile"`
	MerchantInfo       json.RawMessage `json:"merchant_info"`
	Risk               uint32          `json:"risk"`
	Flagged            bool            `json:"flagged"`
}

type fraudEnrich struct {
	flagThreshold uint32
	stats         *eddy.ValueState[stats]
	recent        *eddy.ListState[uint64]
	limits        *eddy.BroadcastMap[string, uint64]
	profiles      *eddy.LookupStore
	merchants     *eddy.LookupStore
}

func init() {
	eddy.Register(&fraudEnrich{})
}

func (p *fraudEnrich) Init(config eddy.Config) error {
	var s settings
	if err := config.Parse(&s); err != nil {
		return err
	}
	p.flagThreshold = 70
	if s.FlagThreshold != nil {
		p.flagThreshold = *s.FlagThreshold
	}
	p.profiles, p.merchants = nil, nil
	if s.Profiles != nil {
		store := eddy.LookupStore(*s.Profiles)
		p.profiles = &store
	}
	if s.Merchants != nil {
		store := eddy.LookupStore(*s.Merchants)
		p.merchants = &store
	}
	p.stats = eddy.NewValueState[stats]("stats")
	p.recent = eddy.NewListState[uint64]("recent")
	p.limits = eddy.NewBroadcastMap[string, uint64]("category_limits")
	return nil
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

func risk(tx *transaction, prev *stats, limit *uint64) uint32 {
	var r uint32
	if prev != nil {
		avg := prev.SumCents / prev.Count
		spike := avg * 3
		if avg > math.MaxUint64/3 {
			spike = math.MaxUint64
		}
		if prev.Count >= 3 && tx.AmountCents > spike {
			r += 40
		}
		var gap uint64
		if tx.Ts > prev.LastTs {
			gap = tx.Ts - prev.LastTs
		}
		if gap < 10_000 {
			r += 30
		}
	}
	if tx.AmountCents >= 100_000 {
		r += 30
	}
	if limit != nil && tx.AmountCents > *limit {
		r += 20
	}
	return min(r, 100)
}

// lookup returns the JSON of key in store (nil when no store is configured or no such key).
func lookup(store *eddy.LookupStore, key string) (json.RawMessage, error) {
	if store == nil {
		return nil, nil
	}
	var v json.RawMessage
	found, err := store.GetJSON(key, &v)
	if err != nil || !found {
		return nil, err
	}
	return v, nil
}

func (p *fraudEnrich) enrich(tx *transaction) (eddy.Outcome, error) {
	prevValue, hasPrev, err := p.stats.Get()
	if err != nil {
		return eddy.Outcome{}, err
	}
	var prev *stats
	if hasPrev {
		prev = &prevValue
	}
	recent, err := p.recent.Get()
	if err != nil {
		return eddy.Outcome{}, err
	}
	recent = recent[max(len(recent)-recentLen, 0):]

	limitValue, hasLimit, err := p.limits.Get(tx.Category)
	if err != nil {
		return eddy.Outcome{}, fmt.Errorf("state storage failed: %w", err)
	}
	var limit *uint64
	if hasLimit {
		limit = &limitValue
	}

	// Both lookups run; the profile's error wins, as in the Rust plugin.
	profile, profileErr := lookup(p.profiles, tx.Customer)
	merchantInfo, merchantErr := lookup(p.merchants, tx.Merchant)
	if profileErr != nil {
		return eddy.Rejectf("fraud-enrich: %v", profileErr), nil
	}
	if merchantErr != nil {
		return eddy.Rejectf("fraud-enrich: %v", merchantErr), nil
	}

	var before stats
	if prev != nil {
		before = *prev
	}
	now := stats{
		Count:    satAdd(before.Count, 1),
		SumCents: satAdd(before.SumCents, tx.AmountCents),
		MaxCents: max(before.MaxCents, tx.AmountCents),
		LastTs:   tx.Ts,
	}
	score := risk(tx, prev, limit)
	var previousTs *uint64
	if prev != nil {
		previousTs = &prev.LastTs
	}
	out := enriched{
		ID: tx.ID, Customer: tx.Customer, AmountCents: tx.AmountCents, Merchant: tx.Merchant,
		Category: tx.Category, Ts: tx.Ts,
		CustomerCount: now.Count, CustomerSumCents: now.SumCents,
		CustomerAvgCents: now.SumCents / now.Count, CustomerMaxCents: now.MaxCents,
		PreviousTs: previousTs, RecentCents: recent, CategoryLimitCents: limit,
		Profile: nullIfEmpty(profile), MerchantInfo: nullIfEmpty(merchantInfo),
		Risk: score, Flagged: score >= p.flagThreshold,
	}
	output, err := eddy.JSONOutput(out)
	if err != nil {
		return eddy.Rejectf("fraud-enrich: %v", err), nil
	}
	output = output.WithHeader("Eddy-Risk", strconv.FormatUint(uint64(score), 10))

	if err := p.stats.Set(now); err != nil {
		return eddy.Outcome{}, err
	}
	recent = append(append([]uint64(nil), recent...), tx.AmountCents)
	recent = recent[max(len(recent)-recentLen, 0):]
	if err := p.recent.Update(recent); err != nil {
		return eddy.Outcome{}, err
	}
	return eddy.Emit(output), nil
}

func nullIfEmpty(raw json.RawMessage) json.RawMessage {
	if raw == nil {
		return json.RawMessage("null")
	}
	return raw
}

func (p *fraudEnrich) Process(event *eddy.Event) eddy.Outcome {
	var tx transaction
	if err := event.JSON(&tx); err != nil {
		return eddy.Rejectf("fraud-enrich: payload is not a transaction: %v", err)
	}
	outcome, err := p.enrich(&tx)
	if err != nil {
		return eddy.Rejectf("fraud-enrich: %v", err)
	}
	return outcome
}

func (p *fraudEnrich) PlanLookups(event *eddy.Event) []eddy.LookupRequest {
	var tx transaction
	if event.JSON(&tx) != nil {
		return nil
	}
	var plan []eddy.LookupRequest
	if p.profiles != nil {
		plan = append(plan, p.profiles.Request(tx.Customer))
	}
	if p.merchants != nil {
		plan = append(plan, p.merchants.Request(tx.Merchant))
	}
	return plan
}

func (p *fraudEnrich) ProcessBroadcast(event *eddy.BroadcastEvent) error {
	var r rule
	if err := eddy.UnmarshalStrict(event.Payload, &r); err != nil {
		return fmt.Errorf("fraud-enrich: not a rule: %v", err)
	}
	var err error
	switch {
	case r.Remove:
		err = p.limits.Remove(r.Category)
	case r.LimitCents != nil:
		err = p.limits.Put(r.Category, *r.LimitCents)
	default:
		return fmt.Errorf("fraud-enrich: rule for `%s` has neither limit_cents nor remove", r.Category)
	}
	if err != nil {
		return fmt.Errorf("fraud-enrich: %v", err)
	}
	return nil
}
