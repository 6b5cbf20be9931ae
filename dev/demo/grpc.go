package demo

import (
	"context"
	"encoding/json"

	"google.golang.org/grpc"
)

// jsonCodec lets the demo speak gRPC without protoc: messages are plain Go
// structs sent as JSON (content-type application/grpc+json). The proxy only
// cares about gRPC framing and trailers, not the message encoding.
type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return "json" }

// Product is one item of the catalog.
type Product struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	PriceCents int    `json:"price_cents"`
}

// ListProductsRequest asks for one page of the catalog.
type ListProductsRequest struct {
	Page int `json:"page"`
}

// ListProductsReply is one page of the catalog.
type ListProductsReply struct {
	Products []Product `json:"products"`
}

// GetProductRequest names one product.
type GetProductRequest struct {
	ID string `json:"id"`
}

// PlaceOrderRequest is a cart being checked out.
type PlaceOrderRequest struct {
	CartID     string `json:"cart_id"`
	TotalCents int    `json:"total_cents"`
}

// PlaceOrderReply confirms an order.
type PlaceOrderReply struct {
	OrderID string `json:"order_id"`
	Charge  string `json:"charge"`
}

// Full method names, as protoc would generate them for package shop.
const (
	catalogService   = "shop.Catalog"
	checkoutService  = "shop.Checkout"
	methodList       = "/" + catalogService + "/ListProducts"
	methodGetProduct = "/" + catalogService + "/GetProduct"
	methodPlaceOrder = "/" + checkoutService + "/PlaceOrder"
)

// unary adapts a typed handler to grpc's untyped MethodDesc.
func unary[Req, Resp any](service, name string, h func(context.Context, *Req) (*Resp, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return h(ctx, req)
			}
			info := &grpc.UnaryServerInfo{FullMethod: "/" + service + "/" + name}
			return interceptor(ctx, req, info, func(ctx context.Context, r any) (any, error) { return h(ctx, r.(*Req)) })
		},
	}
}

// serviceDesc describes a hand-written service; HandlerType any because the
// handlers are closures, not methods of a generated interface.
func serviceDesc(name string, methods ...grpc.MethodDesc) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{ServiceName: name, HandlerType: (*any)(nil), Methods: methods}
}
