package main

import (
	"context"
	"errors"
	"io"
)

// serveCmd is a placeholder until its issue lands; its owner replaces this file.
func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not built yet")
}
