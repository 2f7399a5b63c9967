package config

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// exampleFiles prefers the repository's examples/ and falls back to the
// spec's copy.
func exampleFiles(t testing.TB) []string {
	t.Helper()
	for _, dir := range []string{filepath.Join("..", "examples"), "/work/shared/spec/examples"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.js"))
		if len(files) > 0 {
			return files
		}
	}
	return nil
}

func TestExamples(t *testing.T) {
	files := exampleFiles(t)
	if len(files) == 0 {
		t.Skip("SKIP: no example configs in ../examples or /work/shared/spec/examples")
	}
	want := map[string]struct {
		app       string
		processes int
	}{
		"minimal.js":                  {"hello", 1},
		"velocious.js":                {"shopfront", 4},
		"function-export-commonjs.js": {"billing", 3},
		"legacy-migration.js":         {"ticket-server", 2},
	}
	env := []string{"DATABASE_URL=postgres://db"}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(context.Background(), f, LoadOptions{Env: env})
			if err != nil {
				t.Fatal(err)
			}
			if w, ok := want[filepath.Base(f)]; ok && (cfg.Application != w.app || len(cfg.Processes) != w.processes) {
				t.Errorf("application %q with %d processes, want %q with %d", cfg.Application, len(cfg.Processes), w.app, w.processes)
			}
			// Every instance renders with ports at the low end of their
			// ranges (what doctor does).
			ports := map[string]int{}
			for _, p := range cfg.Processes {
				if p.Port != nil {
					ports[p.ID] = p.Port.From
				}
			}
			rc := cfg.ReleaseContext("r1", "/srv/release", "", ports, append(os.Environ(), env...))
			for i := range cfg.Processes {
				p := &cfg.Processes[i]
				for r := 0; r < p.Replicas; r++ {
					if _, err := p.Build(rc, r); err != nil {
						t.Errorf("%s: %v", p.InstanceID(r), err)
					}
				}
			}
		})
	}

	// function-export-commonjs.js reads process.env.
	for _, f := range files {
		if filepath.Base(f) != "function-export-commonjs.js" {
			continue
		}
		cfg, err := Load(context.Background(), f, LoadOptions{Env: []string{"APP_NAME=payroll", "BILLING_PROXY_PORT=8499"}})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Application != "payroll" || cfg.Proxy.Port != 8499 || cfg.Control.Path != "/tmp/rollbridge-payroll.sock" || cfg.Proxy.UpstreamHost != "127.0.0.1" {
			t.Errorf("env-driven config = %s %d %s %s", cfg.Application, cfg.Proxy.Port, cfg.Control.Path, cfg.Proxy.UpstreamHost)
		}
	}
}

// BenchmarkLoad measures one full load (read, bundle, evaluate, normalize)
// of each example: go test -bench=Load -run='^$' ./config
func BenchmarkLoad(b *testing.B) {
	files := exampleFiles(b)
	if len(files) == 0 {
		b.Skip("SKIP: no example configs")
	}
	for _, f := range files {
		b.Run(filepath.Base(f), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Load(context.Background(), f, LoadOptions{Env: []string{}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
