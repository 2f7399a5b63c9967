package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const body = `{application: "forms", proxy: {port: 8300}, processes: [` + web + `]}`

func TestExportForms(t *testing.T) {
	cases := map[string]string{
		"esm object":                      `export default ` + body,
		"esm arrow function":              `export default () => (` + body + `)`,
		"esm async arrow":                 `export default async () => (` + body + `)`,
		"esm async awaiting":              `const part = async () => (` + body + `); export default async function () { const c = await part(); await null; return c }`,
		"esm named default":               `const config = ` + body + `; export {config as default}`,
		"esm default promise":             `export default Promise.resolve(` + body + `)`,
		"esm function returning thenable": `export default () => ({then(resolve) { resolve(` + body + `) }})`,
		"cjs object":                      `module.exports = ` + body,
		"cjs function":                    `module.exports = function () { return ` + body + ` }`,
		"cjs async function":              `module.exports = async () => { await Promise.resolve(); return ` + body + ` }`,
		"cjs exports properties":          `const c = ` + body + `; exports.application = c.application; exports.proxy = c.proxy; exports.processes = c.processes`,
		"cjs babel interop":               `module.exports = {__esModule: true, default: ` + body + `}`,
		"modern syntax": `class Conf { #app = "forms"; get app() { return this.#app } }
const opt = {a: {b: null}}
async function* gen() { yield ` + web + ` }
export default async () => {
  const processes = []
  for await (const p of gen()) processes.push({...p})
  return {application: new Conf().app ?? opt?.a?.b, proxy: {port: 8300}, processes}
}`,
	}
	for name, src := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := mustLoad(t, src)
			if cfg.Application != "forms" || cfg.Proxy.Port != 8300 || len(cfg.Processes) != 1 || cfg.Processes[0].ID != "web" {
				t.Fatalf("unexpected config: %+v", cfg)
			}
		})
	}
}

func TestProcessEnv(t *testing.T) {
	src := `export default () => ({
  application: process.env.APP_NAME || "fallback",
  proxy: {port: Number(process.env.PROXY_PORT || 8400)},
  processes: [` + web + `]
})`
	path := writeConfig(t, src)
	cfg, err := Load(context.Background(), path, LoadOptions{Env: []string{"APP_NAME=from-env", "PROXY_PORT=8411", "BROKEN"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Application != "from-env" || cfg.Proxy.Port != 8411 {
		t.Fatalf("process.env not visible: %s %d", cfg.Application, cfg.Proxy.Port)
	}

	// nil Env means the real environment.
	t.Setenv("APP_NAME", "from-os")
	cfg, err = Load(context.Background(), path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Application != "from-os" {
		t.Fatalf("Application = %q, want from-os (os.Environ default)", cfg.Application)
	}

	// Empty Env: nothing set.
	cfg, err = Load(context.Background(), path, LoadOptions{Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Application != "fallback" {
		t.Fatalf("Application = %q, want fallback", cfg.Application)
	}
}

func TestMissingDefaultExport(t *testing.T) {
	for name, src := range map[string]string{
		"named export only":        `export const config = ` + body,
		"empty file":               ``,
		"no exports":               `const config = ` + body,
		"esm default undefined":    `export default undefined`,
		"module.exports undefined": `module.exports = undefined`,
	} {
		t.Run(name, func(t *testing.T) {
			path := writeConfig(t, src)
			_, err := Load(context.Background(), path, testOptions())
			want := "Config module " + path + " must export a default config object or function"
			if err == nil || err.Error() != want {
				t.Fatalf("error = %v\nwant %s", err, want)
			}
			_, issues := Check(context.Background(), path, testOptions())
			if len(issues) != 1 || issues[0].Message != want || issues[0].Fix != ReadFailureFix {
				t.Fatalf("Check issues = %+v", issues)
			}
		})
	}
}

func TestEvaluationErrors(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want string // substring; <abs> is replaced by the config path
	}{
		{"syntax error", "// line 1\nexport default {\n  a: 1,,\n}\n", `<abs>:3: Expected identifier but found ","`},
		{"import of fs", "// c\n\nimport fs from \"fs\"\nexport default {}\n",
			`<abs>:3: import of Node built-in "fs" is not supported; compute the value in the config itself or pass it through process.env`},
		{"require of node:child_process", "const cp = require(\"node:child_process\")\nmodule.exports = {}\n",
			`<abs>:1: require of Node built-in "node:child_process" is not supported`},
		{"import of fs/promises", "\nimport {readFile} from \"fs/promises\"\nexport default {}\n", `<abs>:2: import of Node built-in "fs/promises" is not supported`},
		{"dynamic import of path", "export default async () => { const p = await import(\"path\"); return {} }\n", `<abs>:1: dynamic import of Node built-in "path" is not supported`},
		{"missing local module", "import x from \"./nope.js\"\nexport default x\n", `<abs>:1: Could not resolve "./nope.js"`},
		{"top-level throw", "const a = 1\nthrow new Error(\"boom\")\n", `<abs>:2: Error: boom`},
		{"throw in function", "export default () => {\n  const x = null\n  return x.y\n}\n", `<abs>:3: TypeError: Cannot read property 'y'`},
		{"rejected promise", "export default async () => {\n  await null\n  throw new Error(\"nope\")\n}\n", `Config function in <abs> rejected: Error: nope (at <abs>:3)`},
		{"rejected with string", "export default () => Promise.reject(\"plain\")\n", `Config function in <abs> rejected: plain`},
		{"never settles", "export default () => new Promise(() => {})\n", `Config function in <abs> returned a promise that never settled`},
		{"unbounded recursion", "function f() { return f() }\nexport default f()\n", `<abs>:1: RangeError: Maximum call stack size exceeded`},
		{"getter throws", "export default {get proxy() { throw new Error(\"getter\") }}\n", `<abs>:1: Error: getter`},
		{"dynamic require", "const name = \"fs\"\nmodule.exports = require(name)\n", `<abs>:2: TypeError: require("fs") is not supported at run time`},
		{"top-level await", "const v = await Promise.resolve(1)\nexport default {}\n", `<abs>:1: Top-level await is currently not supported`},
		{"setTimeout is absent", "export default () => new Promise(r => setTimeout(r, 1))\n", `Config function in <abs> rejected: ReferenceError: setTimeout is not defined`},
		{"self-referencing fan-out", "const c = {}\nc.a = c; c.b = c\nexport default c\n", `RangeError: the exported config has more than 100000 values`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.src)
			opts := testOptions()
			opts.Timeout = 20 * time.Second // generous: -race slows goja down ~10x
			_, err := Load(context.Background(), path, opts)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			var inv *InvalidError
			if errors.As(err, &inv) {
				t.Fatalf("got validation error, want evaluation error: %v", err)
			}
			want := strings.ReplaceAll(tc.want, "<abs>", path)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error:\n %s\nwant it to contain:\n %s", err, want)
			}
		})
	}
}

func TestConsoleIsAvailable(t *testing.T) {
	cfg := mustLoad(t, `console.log("hello"); console.error("x"); export default `+body)
	if cfg.Application != "forms" {
		t.Fatal(cfg.Application)
	}
}

func TestRelativeImports(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "lib/ports.js", "export const webPorts = {from: 18000, to: 18099}\nexport default 8500\n")
	writeFile(t, dir, "lib/common.cjs", "module.exports = {command: \"run web\"}\n")
	writeFile(t, dir, "lib/data.json", `{"application": "imported"}`)
	path := writeFile(t, dir, "rollbridge.js", `import proxyPort, {webPorts} from "./lib/ports.js"
import data from "./lib/data.json"
const common = require("./lib/common.cjs")
export default {application: data.application, proxy: {port: proxyPort}, processes: [{id: "web", policy: "proxied", port: webPorts, ...common}]}
`)
	cfg, err := Load(context.Background(), path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Application != "imported" || cfg.Proxy.Port != 8500 || cfg.Processes[0].Command != "run web" || *cfg.Processes[0].Port != (PortRange{18000, 18099}) {
		t.Fatalf("unexpected config %+v", cfg)
	}

	// Errors inside an imported file name that file and line.
	writeFile(t, dir, "lib/ports.js", "\n\nimport os from \"os\"\nexport const webPorts = {}\nexport default 1\n")
	_, err = Load(context.Background(), path, testOptions())
	want := filepath.Join(dir, "lib/ports.js") + `:3: import of Node built-in "os" is not supported`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want %q", err, want)
	}
	writeFile(t, dir, "lib/ports.js", "export const webPorts = {}\nexport default (() => { throw new Error(\"in lib\") })()\n")
	_, err = Load(context.Background(), path, testOptions())
	want = filepath.Join(dir, "lib/ports.js") + `:2: Error: in lib`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

// TestReevaluatesEdits: every Load reads and evaluates the file again, for
// ES modules and CommonJS alike (spec §2.1, CFG-25).
func TestReevaluatesEdits(t *testing.T) {
	for _, form := range []string{"export default ", "module.exports = "} {
		dir := t.TempDir()
		writeFile(t, dir, "lib.js", "module.exports = 1\n")
		path := writeFile(t, dir, "rollbridge.js", form+`{application: "v1", proxy: {port: require("./lib.js")}, processes: [`+web+`]}`)
		cfg := loadPath(t, path)
		if cfg.Application != "v1" || cfg.Proxy.Port != 1 {
			t.Fatalf("first load: %s %d", cfg.Application, cfg.Proxy.Port)
		}
		writeFile(t, dir, "lib.js", "module.exports = 2\n")
		writeFile(t, dir, "rollbridge.js", form+`{application: "v2", proxy: {port: require("./lib.js")}, processes: [`+web+`]}`)
		cfg = loadPath(t, path)
		if cfg.Application != "v2" || cfg.Proxy.Port != 2 {
			t.Fatalf("after edit (%s): %s %d", form, cfg.Application, cfg.Proxy.Port)
		}
	}
}

func loadPath(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(context.Background(), path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.js")
	_, err := Load(context.Background(), missing, testOptions())
	if err == nil || err.Error() != "read config "+missing+": no such file or directory" {
		t.Fatalf("missing file: %v", err)
	}
	_, err = Load(context.Background(), dir, testOptions())
	if err == nil || err.Error() != "read config "+dir+": not a regular file" {
		t.Fatalf("directory: %v", err)
	}
	_, issues := Check(context.Background(), missing, testOptions())
	if len(issues) != 1 || issues[0].Fix != "Ensure the file exists and exports a default Rollbridge config object." {
		t.Fatalf("Check: %+v", issues)
	}

	// A relative path is resolved against the working directory.
	path := writeFile(t, dir, "rel/rollbridge.js", procs(web))
	t.Chdir(filepath.Dir(path))
	cfg, err := Load(context.Background(), "rollbridge.js", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != path || cfg.Application != "demo" {
		t.Fatalf("Path = %s, want %s", cfg.Path, path)
	}
}

func TestResolvePath(t *testing.T) {
	dir := t.TempDir()
	if p, err := ResolvePath("custom/config.js", dir); err != nil || p != "custom/config.js" {
		t.Fatalf("explicit: %q %v", p, err)
	}
	want := "No config file found in " + dir + ". Pass --config <path> or add one of: rollbridge.js."
	if _, err := ResolvePath("", dir); err == nil || err.Error() != want {
		t.Fatalf("missing: %v", err)
	}
	// A directory named rollbridge.js is not a config file.
	if err := os.Mkdir(filepath.Join(dir, "rollbridge.js"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolvePath("", dir); err == nil || err.Error() != want {
		t.Fatalf("directory: %v", err)
	}
	other := t.TempDir()
	path := writeFile(t, other, "rollbridge.js", procs(web))
	if p, err := ResolvePath("", other); err != nil || p != path {
		t.Fatalf("default: %q %v", p, err)
	}
	t.Chdir(other)
	if p, err := ResolvePath("", ""); err != nil || p != path {
		t.Fatalf("cwd default: %q %v", p, err)
	}
}

func TestLoadOptionsDefaults(t *testing.T) {
	o := LoadOptions{}.withDefaults()
	if o.Timeout != 5*time.Second || o.MemoryLimit != 256<<20 || o.Env == nil {
		t.Fatalf("defaults: %+v", o)
	}
}

// TestEndlessLoopTimesOut uses the default 5 s bound.
func TestEndlessLoopTimesOut(t *testing.T) {
	path := writeConfig(t, "while (true) {}\nexport default {}\n")
	start := time.Now()
	_, err := Load(context.Background(), path, LoadOptions{Env: []string{}})
	took := time.Since(start)
	t.Logf("while(true){} stopped after %v", took)
	want := "Config " + path + " did not finish evaluating within 5s; check it for endless loops"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant %s", err, want)
	}
	if took > 6*time.Second {
		t.Fatalf("took %v, want < 6s", took)
	}
}

func TestBoundedEvaluation(t *testing.T) {
	short := LoadOptions{Env: []string{}, Timeout: 300 * time.Millisecond}
	for name, src := range map[string]string{
		"loop in function":       "export default () => { for (;;) {} }",
		"loop in async function": "export default async () => { await null; for (;;) {} }",
		"loop in getter":         "export default {get proxy() { for (;;) {} }}",
		"loop in promise job":    "export default () => Promise.resolve().then(() => { for (;;) {} })",
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			err := loadErr(t, src, short)
			t.Logf("stopped after %v: %v", time.Since(start), err)
			if !strings.Contains(err.Error(), "did not finish evaluating within 300ms") {
				t.Fatalf("error = %v", err)
			}
		})
	}
}

func TestRunawayAllocationIsStopped(t *testing.T) {
	src := "const keep = []\nwhile (true) keep.push(\"x\".repeat(1 << 20) + keep.length)\nexport default {}\n"
	opts := LoadOptions{Env: []string{}, MemoryLimit: 64 << 20, Timeout: 30 * time.Second}
	start := time.Now()
	err := loadErr(t, src, opts)
	t.Logf("runaway allocation stopped after %v: %v", time.Since(start), err)
	if !strings.Contains(err.Error(), "allocated more than 64 MiB while evaluating") {
		t.Fatalf("error = %v", err)
	}
}

func TestContextCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	path := writeConfig(t, "while (true) {}\n")
	start := time.Now()
	_, err := Load(ctx, path, LoadOptions{Env: []string{}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want deadline exceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("cancel took %v", took)
	}
}

// TestUninterruptibleBuiltinIsAbandoned: goja cannot interrupt a running
// built-in; Load still returns shortly after the bound instead of hanging.
func TestUninterruptibleBuiltinIsAbandoned(t *testing.T) {
	src := "let o = {}\nfor (let i = 0; i < 40000; i++) o = {o}\nJSON.stringify(o)\nexport default {}\n"
	start := time.Now()
	err := loadErr(t, src, LoadOptions{Env: []string{}, Timeout: 200 * time.Millisecond})
	took := time.Since(start)
	t.Logf("abandoned after %v: %v", took, err)
	if took > 3*time.Second {
		t.Fatalf("Load blocked for %v", took)
	}
	if !strings.Contains(err.Error(), "evaluation abandoned") && !strings.Contains(err.Error(), "did not finish evaluating") {
		t.Fatalf("error = %v", err)
	}
}

// TestInvalidUTF8IsRejected: invalid bytes are reported with their line, in
// the entry file and in an imported module (esbuild 0.28 loops forever on
// them while building the source map, so they must never reach it).
func TestInvalidUTF8IsRejected(t *testing.T) {
	for _, src := range []string{
		"#!\xf1\xf1\xf1\xf1",
		"export default {}\n// caf\xe9\n",
		"const s = \"\xf1\xf1\";\nexport default {}\n",
	} {
		start := time.Now()
		err := loadErr(t, src, testOptions())
		if !strings.Contains(err.Error(), "is not valid UTF-8; save the file as UTF-8") {
			t.Errorf("%q: error = %v", src, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("%q: took %v", src, took)
		}
	}
	err := loadErr(t, "export default {}\n// caf\xe9\n", testOptions())
	if !strings.Contains(err.Error(), "rollbridge.js:2: byte 0xe9 at column 7") {
		t.Errorf("line/column not named: %v", err)
	}

	dir := t.TempDir()
	writeFile(t, dir, "lib.js", "export const port = 3000\n/* \xf1\xf1 */ const x = \"\xf1\"\n")
	path := writeFile(t, dir, "rollbridge.js", "import { port } from './lib.js'\nexport default { app: { name: 'a' } }\n")
	_, err = Load(context.Background(), path, testOptions())
	if err == nil || !strings.Contains(err.Error(), "lib.js:2: byte 0xf1") {
		t.Fatalf("imported module: error = %v", err)
	}
}
