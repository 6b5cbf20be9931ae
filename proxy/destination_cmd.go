package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/meshscope/meshscope/proxy/destination"
)

// destinationCommand is `proxy destination`, the discovery service; see proxy/destination.
func destinationCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := destination.ParseFlags(args, stdout)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	return destination.Main(ctx, cfg, stderr)
}
