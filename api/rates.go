package api

import (
	"context"
	"time"

	"github.com/meshscope/meshscope/api/tap"
)

// ProxyRates returns the requests per second each proxy sel picks carried over
// the last minute, keyed by ProxyKey, in direction ("" for both, as a tap
// without a direction filter reports both): one query per direction. It is
// the fan-in's ProxyRates.
func (q *Querier) ProxyRates(ctx context.Context, sel Selector, direction string) (map[string]float64, error) {
	dirs := []string{tap.DirectionInbound, tap.DirectionOutbound}
	if direction != "" {
		dirs = []string{direction}
	}
	var match []Match
	for _, m := range []Match{{Label: LabelNamespace, Value: sel.Namespace}, {Label: LabelDeployment, Value: sel.Deployment}, {Label: LabelPod, Value: sel.Pod}} {
		if m.Value != "" {
			match = append(match, m)
		}
	}
	rates := map[string]float64{}
	for _, dir := range dirs {
		vec, _, err := q.Vector(ctx, RPSQuery(Scope{Direction: dir, By: []string{LabelNamespace, LabelPod}, Match: match, Window: time.Minute}))
		if err != nil {
			return nil, err
		}
		for _, s := range vec {
			rates[ProxyKey(string(s.Metric[LabelNamespace]), string(s.Metric[LabelPod]))] += float64(s.Value)
		}
	}
	return rates, nil
}
