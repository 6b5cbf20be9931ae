package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// templatePaths says where each kind the injector meshes keeps its pod template, by API group and
// kind; a Pod is its own template (nil path).
var templatePaths = map[string][]string{
	"/Pod":             nil,
	"apps/Deployment":  {"spec", "template"},
	"apps/StatefulSet": {"spec", "template"},
	"apps/DaemonSet":   {"spec", "template"},
	"apps/ReplicaSet":  {"spec", "template"},
	"batch/Job":        {"spec", "template"},
	"batch/CronJob":    {"spec", "jobTemplate", "spec", "template"},
}

// Mode is what Manifests does to each pod template.
type Mode int

const (
	// Inject adds the proxy.
	Inject Mode = iota
	// Remove takes it away (--uninject).
	Remove
)

// Report is one line for the operator about one object: what was done, or why not.
type Report struct {
	Object string // kind/name, e.g. "deployment/web"
	Done   bool   // injected or uninjected
	Reason string // why it was skipped, when not Done
}

func (r Report) String() string {
	if r.Done {
		return r.Object
	}
	return r.Object + " skipped: " + r.Reason
}

// Manifests reads Kubernetes manifests (YAML or JSON, several documents each, Lists included) from r
// and writes them to w with every pod template injected (or uninjected), as YAML documents
// separated by "---". A document the injector does not change is written byte for byte as it came,
// comments included; a changed one is re-encoded from its data, so its keys come out sorted and its
// comments are gone, but every value the injector does not own is the same.
func (c Config) Manifests(r io.Reader, w io.Writer, mode Mode) ([]Report, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var reports []Report
	first := true
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return reports, nil
		}
		if err != nil {
			return reports, fmt.Errorf("read yaml: %w", err)
		}
		out, rep, err := c.document(doc, mode)
		if err != nil {
			return reports, err
		}
		if out == nil {
			continue
		}
		reports = append(reports, rep...)
		if !first {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return reports, err
			}
		}
		first = false
		if _, err := w.Write(out); err != nil {
			return reports, err
		}
	}
}

// document processes one YAML document and returns what to write (nil for an empty document).
func (c Config) document(doc []byte, mode Mode) ([]byte, []Report, error) {
	trimmed := trimDocument(doc)
	if len(trimmed) == 0 {
		return nil, nil, nil
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("yaml: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil, nil // comments only
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber() // keep integers exact: a float64 round trip would change large ones
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, nil, fmt.Errorf("want a Kubernetes object, got %.40s", trimmed)
	}
	changed, reports, err := c.object(obj, mode)
	if err != nil {
		return nil, nil, err
	}
	if !changed {
		return trimmed, reports, nil
	}
	js, err = json.Marshal(obj)
	if err != nil {
		return nil, nil, err
	}
	out, err := yaml.JSONToYAML(js)
	return out, reports, err
}

// trimDocument drops a document's leading separator and blank lines and ends it with one newline.
func trimDocument(doc []byte) []byte {
	lines := strings.Split(string(doc), "\n")
	for len(lines) > 0 && (strings.TrimSpace(lines[0]) == "" || strings.HasPrefix(lines[0], "---")) {
		lines = lines[1:]
	}
	s := strings.TrimRight(strings.Join(lines, "\n"), "\n\t ")
	if s == "" {
		return nil
	}
	return []byte(s + "\n")
}

// object injects one object, or every item of a List, and reports whether it changed anything.
func (c Config) object(obj map[string]any, mode Mode) (bool, []Report, error) {
	kind, _ := obj["kind"].(string)
	if items, ok := obj["items"].([]any); ok && strings.HasSuffix(kind, "List") {
		changed := false
		var reports []Report
		for i, item := range items {
			m, ok := item.(map[string]any)
			if !ok {
				return false, nil, fmt.Errorf("%s item %d: want an object", kind, i)
			}
			ch, rep, err := c.object(m, mode)
			if err != nil {
				return false, nil, err
			}
			changed = changed || ch
			reports = append(reports, rep...)
		}
		return changed, reports, nil
	}
	apiVersion, _ := obj["apiVersion"].(string)
	group, _, _ := strings.Cut(apiVersion, "/")
	if !strings.Contains(apiVersion, "/") {
		group = ""
	}
	path, ok := templatePaths[group+"/"+kind]
	if !ok {
		return false, nil, nil
	}
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	w := Workload{Kind: strings.ToLower(kind), Name: name}
	label := w.Kind + "/" + name
	tmpl := obj
	for _, key := range path {
		next, ok := tmpl[key].(map[string]any)
		if !ok {
			return false, nil, fmt.Errorf("%s: no %s", label, strings.Join(path, "."))
		}
		tmpl = next
	}
	if mode == Remove {
		if !Uninject(tmpl) {
			return false, []Report{{Object: label, Reason: "not injected"}}, nil
		}
		return true, []Report{{Object: label, Done: true}}, nil
	}
	before, err := json.Marshal(obj)
	if err != nil {
		return false, nil, err
	}
	var skip SkipError
	switch err := c.Template(tmpl, w); {
	case errors.As(err, &skip):
		return false, []Report{{Object: label, Reason: skip.Reason}}, nil
	case err != nil:
		return false, nil, fmt.Errorf("%s: %w", label, err)
	}
	after, err := json.Marshal(obj)
	if err != nil {
		return false, nil, err
	}
	// Re-injecting an injected template with the same configuration changes nothing: keep its bytes.
	return !bytes.Equal(before, after), []Report{{Object: label, Done: true}}, nil
}

// Sources opens what the operator named: files, directories (their .yaml, .yml and .json files,
// walked in lexical order) and "-" for stdin, as one stream of YAML documents.
func Sources(paths []string, stdin io.Reader) (io.Reader, error) {
	var readers []io.Reader
	add := func(r io.Reader) { readers = append(readers, r, strings.NewReader("\n---\n")) }
	for _, p := range paths {
		if p == "-" {
			add(stdin)
			continue
		}
		info, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			add(bytes.NewReader(b))
			continue
		}
		var files []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && slices.Contains([]string{".yaml", ".yml", ".json"}, filepath.Ext(path)) {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			add(bytes.NewReader(b))
		}
	}
	return io.MultiReader(readers...), nil
}
