package config

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoad: Check and Load must never panic or hang, whatever the file
// contains. Run with: go test -fuzz=FuzzLoad ./config
func FuzzLoad(f *testing.F) {
	for _, file := range exampleFiles(f) {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(string(data))
		}
	}
	for _, seed := range []string{
		procs(web),
		`module.exports = async () => (` + body + `)`,
		"export default {",
		"export default 5",
		"while (true) {}",
		"import fs from \"fs\"\nexport default {}",
		"export default () => new Promise(() => {})",
		"export default async () => { throw new Error('x') }",
		"const c = {}; c.a = c; c.b = c; export default c",
		"export default {proxy: {port: -1}, processes: [{port: {from: 9, to: 1}, health: 1, restart: {maxRestarts: 1.5}}]}",
		"export default {processes: [null, [], 'x', {id: '#', replicas: 2e308, port: NaN}], proxy: []}",
		"export default {control: {mode: '0o8', owner: -0, group: 1e400}, legacyTakeover: {processes: [{includes: [1]}]}}",
		"export default new Proxy({}, {get() { throw 1 }, ownKeys() { return ['a'] }})",
		"export default {get proxy() { return this }, processes: Array(5)}",
		"export default {application: '\\ud800', processes: [{id: 'a\\u0000', env: {'\\u0000': 'x'}}]}",
		"module.exports = require(String(1))",
		"export default Symbol('x')",
		"export default 10n",
		"function f() { f() } f()",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		dir := t.TempDir()
		path := filepath.Join(dir, "rollbridge.js")
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		opts := LoadOptions{Env: []string{"A=1"}, Timeout: 200 * time.Millisecond, MemoryLimit: 64 << 20}
		start := time.Now()
		cfg, issues := Check(context.Background(), path, opts)
		if took := time.Since(start); took > opts.Timeout+abandonAfter+2*time.Second {
			t.Fatalf("Check took %v", took)
		}
		if (cfg == nil) == (len(issues) == 0) {
			t.Fatalf("cfg %v with %d issues", cfg != nil, len(issues))
		}
		for _, is := range issues {
			if is.Message == "" || is.Fix == "" {
				t.Fatalf("empty issue %+v", is)
			}
		}
		if cfg == nil {
			return
		}
		// A valid config renders (errors allowed, panics not) and marshals.
		if _, err := cfg.MarshalJSON(); err != nil {
			t.Fatal(err)
		}
		ports := map[string]int{}
		for _, p := range cfg.Processes {
			if p.Port != nil {
				ports[p.ID] = p.Port.From
			}
		}
		rc := cfg.ReleaseContext("r", dir, "", ports, []string{"A=1"})
		for i := range cfg.Processes {
			_, _ = cfg.Processes[i].Build(rc, 0)
		}
		_ = IncompatibleChanges(cfg, cfg)
	})
}
