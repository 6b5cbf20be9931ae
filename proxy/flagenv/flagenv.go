// Package flagenv gives every flag of a flag set an environment twin, as the proxy and its subcommands
// document them: PREFIX + the flag's name in upper snake case. A flag given on the command line wins.
package flagenv

import (
	"flag"
	"fmt"
	"strings"
)

// Name returns the environment twin of flagName: Name("MESHSCOPE_PROXY_", "inbound-forward") is
// MESHSCOPE_PROXY_INBOUND_FORWARD.
func Name(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Apply sets each flag of fs not given on the command line (fs is parsed) from its environment twin when
// that is set and not empty. The error names the variable, its value and what is wrong with it, on one line.
func Apply(fs *flag.FlagSet, prefix string, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := Name(prefix, f.Name)
		if v := getenv(name); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("invalid %s %q: %s", name, v, strings.Join(strings.Fields(serr.Error()), " "))
			}
		}
	})
	return err
}
