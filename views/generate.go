// Package views renders the dashboard's pages: templ components, pure
// functions of their props. The *_templ.go files are generated from the
// *.templ files, from the repository root so that the file names recorded in
// them match what dev/test.sh's freshness check writes.
package views

//go:generate sh -c "cd .. && go tool templ generate -path ."
