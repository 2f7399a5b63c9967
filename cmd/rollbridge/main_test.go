package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the CLI in-process with dir as its working directory.
func runCLI(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runCLIEnv(t, dir, []string{"PATH=/usr/bin:/bin"}, args...)
}

// runCLIEnv runs the CLI in-process with dir as its working directory and
// env as its whole environment.
func runCLIEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, cwd: dir, env: env}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := a.run(ctx, args)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	// Absolute paths differ between checkouts.
	if wd, err := os.Getwd(); err == nil {
		got = strings.ReplaceAll(got, wd, "$WD")
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden %s: %v (run go test -update)", path, err)
	}
	if got != string(want) {
		t.Errorf("%s mismatch\n--- got ---\n%s\n--- want ---\n%s", name, got, want)
	}
}

func TestValidateGolden(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string // golden file for stdout ("" = must be empty)
		stderr string // golden file for stderr ("" = must be empty)
	}{
		{"valid text", []string{"validate", "-c", "testdata/valid.js"}, 0, "validate-valid.txt", ""},
		{"valid json", []string{"validate", "--json", "-c", "testdata/valid.js"}, 0, "validate-valid.json", ""},
		{"broken text", []string{"validate", "-c", "testdata/broken.js"}, 1, "", "validate-broken.txt"},
		{"broken json", []string{"validate", "--config", "testdata/broken.js", "--json"}, 1, "validate-broken.json", ""},
		{"single issue text", []string{"validate", "-c", "testdata/single-issue.js"}, 1, "", "validate-single-issue.txt"},
		{"missing file json", []string{"validate", "--json", "-c", "testdata/nope.js"}, 1, "validate-missing.json", ""},
	}
	wd, _ := os.Getwd()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, wd, c.args...)
			if r.code != c.code {
				t.Errorf("exit code %d, want %d (stderr %q)", r.code, c.code, r.stderr)
			}
			check := func(stream, file, got string) {
				if file == "" {
					if got != "" {
						t.Errorf("unexpected %s: %q", stream, got)
					}
					return
				}
				golden(t, file, got)
			}
			check("stdout", c.stdout, r.stdout)
			check("stderr", c.stderr, r.stderr)
		})
	}
}

func TestValidateDefaultConfigPath(t *testing.T) {
	dir := t.TempDir()
	r := runCLI(t, dir, "validate")
	if r.code != 1 || !strings.Contains(r.stderr, "No config file found in "+dir+". Pass --config <path> or add one of: rollbridge.js.") {
		t.Fatalf("missing default config: code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, dir, "validate", "--json")
	want := `{
  "config": null,
  "issues": [
    {
      "fix": "Pass --config or add a rollbridge.js.",
      "message": "No config file found in ` + dir + `. Pass --config <path> or add one of: rollbridge.js."
    }
  ],
  "path": null,
  "valid": false
}
`
	if r.code != 1 || r.stdout != want {
		t.Fatalf("json: code %d\n%s", r.code, r.stdout)
	}
	src, err := os.ReadFile("testdata/valid.js")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rollbridge.js"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, dir, "validate")
	if r.code != 0 || !strings.HasSuffix(r.stdout, "rollbridge.js is valid: 2 processes, proxy on 127.0.0.1:8399.\n") {
		t.Fatalf("default path: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestValidateRunawayConfigIsBounded(t *testing.T) {
	start := time.Now()
	r := runCLI(t, ".", "validate", "-c", "testdata/loop.js")
	elapsed := time.Since(start)
	t.Logf("while(true){} rejected after %v: %s", elapsed.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1", r.code)
	}
	if elapsed > 6*time.Second {
		t.Fatalf("runaway config took %v, want the 5 s bound", elapsed)
	}
}

func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.js")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		r := runCLI(t, ".", "validate", "-c", f)
		if r.code != 0 {
			t.Errorf("%s: exit %d\n%s", f, r.code, r.stderr)
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := runCLI(t, ".", "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "rollbridge") || !strings.Contains(r.stdout, "__complete") {
			t.Errorf("completion %s: code %d, %d bytes", sh, r.code, len(r.stdout))
		}
	}
	// The scripts ask the binary itself (cobra's __complete), so the live
	// command and flag definitions are what completes.
	r := runCLI(t, ".", "__complete", "val")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "validate\t") {
		t.Errorf("command completion: %q", r.stdout)
	}
	r = runCLI(t, ".", "__complete", "validate", "--")
	for _, flag := range []string{"--config", "--json"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("flag completion lacks %s: %q", flag, r.stdout)
		}
	}
	r = runCLI(t, ".", "completion", "tcsh")
	if r.code != 1 || r.stderr != "Unsupported shell \"tcsh\". Supported shells: bash, zsh, fish.\n" {
		t.Errorf("unsupported shell: code %d stderr %q", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	r := runCLI(t, ".", "validate", "--nope")
	if r.code != 1 || r.stderr != "error: unknown flag: --nope\n" {
		t.Errorf("unknown flag: code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, ".", "frobnicate")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "error: unknown command \"frobnicate\"") {
		t.Errorf("unknown command: code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, ".")
	if r.code != 1 || !strings.Contains(r.stderr, "Usage:") || r.stdout != "" {
		t.Errorf("no command: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestVersion(t *testing.T) {
	r := runCLI(t, ".", "version", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"version"`) {
		t.Errorf("version: code %d stdout %q", r.code, r.stdout)
	}
}

// TestReadmeValidateExample keeps the README's sample output true.
func TestReadmeValidateExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const prompt = "$ rollbridge validate -c examples/invalid/broken.js\n"
	_, rest, ok := strings.Cut(string(readme), "```text\n"+prompt)
	if !ok {
		t.Fatal("README lacks the validate example block")
	}
	want, _, _ := strings.Cut(rest, "```")
	r := runCLI(t, "../..", "validate", "-c", "examples/invalid/broken.js")
	if r.code != 1 || r.stderr != want {
		t.Errorf("README example is stale (exit %d):\n--- actual ---\n%s--- README ---\n%s", r.code, r.stderr, want)
	}
}
