package main

import (
	"os"
	"testing"

	"github.com/meshscope/meshscope/dev/kubetest"
)

// TestMain stops the API server the operator commands' tests share (install, check, dashboard).
func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }
