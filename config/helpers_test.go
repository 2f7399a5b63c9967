package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// web is a valid proxied process; most cases add a second process or
// override web's fields (later duplicate keys win in an object literal).
const web = `{id: "web", policy: "proxied", command: "run web", port: {from: 18000, to: 18099}}`

// procs is a valid top level with the given processes.
func procs(ps ...string) string {
	return `export default {application: "demo", proxy: {port: 8182}, processes: [` + strings.Join(ps, ", ") + `]}`
}

// top is a valid config plus extra top-level fields (which may override).
func top(fields string) string {
	return `export default {application: "demo", proxy: {port: 8182}, processes: [` + web + `], ` + fields + `}`
}

// webWith is web with extra fields.
func webWith(fields string) string {
	return strings.TrimSuffix(web, "}") + ", " + fields + "}"
}

// worker is a companion with extra fields.
func worker(fields string) string {
	w := `{id: "worker", policy: "companion", command: "run worker"`
	if fields != "" {
		w += ", " + fields
	}
	return w + "}"
}

// writeFile writes name under dir and returns its path.
func writeFile(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeConfig writes src as rollbridge.js in a fresh temp dir.
func writeConfig(t *testing.T, src string) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "rollbridge.js", src)
}

func testOptions() LoadOptions {
	return LoadOptions{Env: []string{"PATH=/usr/bin"}, Timeout: 2 * time.Second}
}

// check writes src and runs Check on it.
func check(t *testing.T, src string) (*Config, []Issue) {
	t.Helper()
	return Check(context.Background(), writeConfig(t, src), testOptions())
}

// mustLoad loads src and fails the test on any error.
func mustLoad(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := Load(context.Background(), writeConfig(t, src), testOptions())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

// loadErr loads src and returns the error (failing when there is none).
func loadErr(t *testing.T, src string, opts LoadOptions) error {
	t.Helper()
	_, err := Load(context.Background(), writeConfig(t, src), opts)
	if err == nil {
		t.Fatalf("Load succeeded, want an error")
	}
	return err
}

func messages(issues []Issue) []string {
	out := make([]string, len(issues))
	for i, is := range issues {
		out[i] = is.Message
	}
	return out
}
