package grafana

import (
	"bytes"
	"encoding/json"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	promparser "github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite dashboards/*.json from Dashboards()")

// sample values of every template variable, as Grafana substitutes them.
var sample = map[string]string{"namespace": "shop", "deployment": "checkout", "pod": "checkout-84d9c6-0", "__rate_interval": "1m"}

func TestShippedJSONIsGeneratedFromDashboards(t *testing.T) {
	for _, d := range Dashboards() {
		t.Run(d.UID, func(t *testing.T) {
			want, err := d.JSON()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("dashboards", d.FileName())
			if *update {
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./dev/grafana -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s is stale: run go test ./dev/grafana -update", path)
			}
		})
	}
}

func TestEveryExpressionParsesWithPrometheusParser(t *testing.T) {
	p := promparser.NewParser(promparser.Options{})
	for _, d := range Dashboards() {
		for _, q := range d.Queries(sample) {
			t.Run(d.Slug+"/"+q, func(t *testing.T) {
				if strings.Contains(q, "$") {
					t.Fatalf("unsubstituted variable in %s", q)
				}
				if _, err := p.ParseExpr(q); err != nil {
					t.Fatalf("parse: %v", err)
				}
			})
		}
	}
}

// TestShippedJSONIsWhatGrafanaNeeds reads the files themselves: the variables
// the links set exist, the datasource is a variable, not an export input, and
// every panel's expression parses.
func TestShippedJSONIsWhatGrafanaNeeds(t *testing.T) {
	for _, d := range Dashboards() {
		t.Run(d.UID, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("dashboards", d.FileName()))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte("${DS_")) {
				t.Fatal("dashboard uses an export input (${DS_...}) instead of the datasource variable")
			}
			var model struct {
				UID, Title string
				Templating struct {
					List []struct{ Name, Type string }
				}
				Panels []struct {
					Datasource struct{ UID string }
					Targets    []struct{ Expr string }
				}
			}
			if err := json.Unmarshal(raw, &model); err != nil {
				t.Fatal(err)
			}
			if model.UID != d.UID || slugify(model.Title) != d.Slug {
				t.Fatalf("uid %q title %q: want uid %q and a title whose slug is %q", model.UID, model.Title, d.UID, d.Slug)
			}
			vars := map[string]string{}
			for _, v := range model.Templating.List {
				vars[v.Name] = v.Type
			}
			if vars["datasource"] != "datasource" {
				t.Fatalf("variables %v: want a datasource variable named datasource", vars)
			}
			if _, ok := vars["namespace"]; !ok {
				t.Fatalf("variables %v: want namespace", vars)
			}
			// The file's own expressions, variables substituted as Grafana does.
			var pairs []string
			for k, v := range sample {
				pairs = append(pairs, "$"+k, v)
			}
			substitute := strings.NewReplacer(pairs...)
			p := promparser.NewParser(promparser.Options{})
			for _, panel := range model.Panels {
				if panel.Datasource.UID != "${datasource}" || len(panel.Targets) == 0 {
					t.Fatalf("panel datasource %q with %d targets: want ${datasource} and at least one query", panel.Datasource.UID, len(panel.Targets))
				}
				for _, target := range panel.Targets {
					if _, err := p.ParseExpr(substitute.Replace(target.Expr)); err != nil {
						t.Errorf("%s: %v", target.Expr, err)
					}
				}
			}
		})
	}
}

// grafanaLinks finds every s.grafana("uid", "slug", …) call in the
// dashboard's source: the links users follow.
func grafanaLinks(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "web", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "grafana" {
				return true
			}
			uid, err1 := literal(call.Args[0])
			slug, err2 := literal(call.Args[1])
			if err1 != nil || err2 != nil {
				t.Errorf("%s: grafana link with a non-literal uid or slug", fset.Position(call.Pos()))
				return true
			}
			links[uid] = slug
			return true
		})
	}
	return links
}

// slugify is Grafana's slug of a title, for checking that titles and the
// link slugs agree.
func slugify(title string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimSpace(title)), " ", "-")
}

func literal(e ast.Expr) (string, error) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", strconv.ErrSyntax
	}
	return strconv.Unquote(lit.Value)
}

func TestEveryLinkedUIDExistsWithItsSlug(t *testing.T) {
	links := grafanaLinks(t)
	if len(links) == 0 {
		t.Fatal("found no grafana links in web/: has the link helper been renamed?")
	}
	shipped := map[string]string{}
	for _, d := range Dashboards() {
		shipped[d.UID] = d.Slug
	}
	for uid, slug := range links {
		t.Run(uid, func(t *testing.T) {
			got, ok := shipped[uid]
			if !ok {
				t.Fatalf("web links to uid %q, which no shipped dashboard has", uid)
			}
			if got != slug {
				t.Fatalf("web links to %s/%s, the dashboard's slug is %s", uid, slug, got)
			}
		})
	}
}

func TestProvisioningPointsGrafanaAtTheDashboards(t *testing.T) {
	var ds struct {
		Datasources []struct{ Name, Type, UID, URL string }
	}
	var prov struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	for path, v := range map[string]any{
		"provisioning/datasources/meshscope.yaml": &ds,
		"provisioning/dashboards/meshscope.yaml":  &prov,
	} {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL == "" {
		t.Fatalf("datasources %+v: want one prometheus datasource with a URL", ds.Datasources)
	}
	if len(prov.Providers) != 1 || prov.Providers[0].Type != "file" || prov.Providers[0].Options.Path == "" {
		t.Fatalf("providers %+v: want one file provider with a path", prov.Providers)
	}
}
