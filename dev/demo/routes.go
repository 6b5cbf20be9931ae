package demo

import "strconv"

// The demo's route story, in the destinations file every proxy reads: web's calls to checkout's
// PlaceOrder (the gRPC call behind POST /checkout) retry UNAVAILABLE, so most of checkout's injected
// failures never reach a shopper and the retries show on web's routes table; checkout's charges go 90/10
// to payments and payments-v2, a traffic split between two versions.

// route is one entry of a service's routes: list (see proxy/routes).
type route struct {
	Name     string            `yaml:"name"`
	Matches  []match           `yaml:"matches,omitempty"`
	Retry    map[string]string `yaml:"retry,omitempty"`
	Backends []backend         `yaml:"backends,omitempty"`
}

type match struct {
	Method string            `yaml:"method,omitempty"`
	Path   map[string]string `yaml:"path,omitempty"`
}

type backend struct {
	Authority string `yaml:"authority"`
	Weight    int    `yaml:"weight"`
}

// RetryLimit is how many times web's proxy retries an UNAVAILABLE PlaceOrder.
const RetryLimit = 2

// PaymentsV2Share is the part of payments' charges the split sends to payments-v2.
const PaymentsV2Share = 0.1

// routesOf returns the routes of the service of deployment, none for most.
func (m Mesh) routesOf(deployment string) []route {
	switch deployment {
	case "checkout":
		return []route{{
			Name:    "place-order",
			Matches: []match{{Method: "POST", Path: map[string]string{"exact": methodPlaceOrder}}},
			Retry:   map[string]string{"grpc": "unavailable", "limit": strconv.Itoa(RetryLimit)},
		}}
	case "payments":
		return []route{{
			Name:    "charge",
			Matches: []match{{Method: "POST", Path: map[string]string{"exact": "/v1/charges"}}},
			Backends: []backend{
				{Authority: m.service("payments").Authority, Weight: int(100 * (1 - PaymentsV2Share))},
				{Authority: m.service("payments-v2").Authority, Weight: int(100 * PaymentsV2Share)},
			},
		}}
	}
	return nil
}
