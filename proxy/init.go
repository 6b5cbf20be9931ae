package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"

	"github.com/meshscope/meshscope/proxy/iptables"
)

// initCommand is `proxy init`, the init container: see proxy/iptables.
func initCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := iptables.ParseFlags(args, os.Getenv, stdout)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	return iptables.Run(ctx, opts, stdout)
}
