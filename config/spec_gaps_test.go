package config

// Tests for review-checklist items of the spec (§10) that the other test
// files do not pin: CFG-14 (memory.checkIntervalMs default) and the config
// side of TPL-04 (lifecycle hooks are not templated). CFG-07's unknown
// owner/group error is raised when the daemon binds its socket (package
// daemon); it is asserted end to end by e2e.TestControlUnknownOwnerOrGroup.

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestMemoryCheckIntervalDefault (CFG-14, spec §2.10): a memory block
// without checkIntervalMs (absent, undefined or null) samples every 5000 ms;
// warnBytes defaults to 0 (off); an explicit positive value, fractional
// included, is kept; the normalized JSON shows the default as 5000.
func TestMemoryCheckIntervalDefault(t *testing.T) {
	if DefaultMemoryInterval != 5000*time.Millisecond {
		t.Errorf("DefaultMemoryInterval = %v, want 5000ms", DefaultMemoryInterval)
	}
	cfg := mustLoad(t, procs(
		webWith(`memory: {limitBytes: 1048576}`),
		worker(`memory: {limitBytes: 2097152, checkIntervalMs: undefined}`),
		`{id: "nulled", command: "run nulled", memory: {limitBytes: 4096, warnBytes: 1024, checkIntervalMs: null}}`,
		`{id: "fast", command: "run fast", memory: {limitBytes: 4096, checkIntervalMs: 12.5}}`,
		`{id: "plain", command: "run plain"}`,
	))
	want := map[string]*Memory{
		"web":    {LimitBytes: 1048576, CheckInterval: 5 * time.Second},
		"worker": {LimitBytes: 2097152, CheckInterval: 5 * time.Second},
		"nulled": {LimitBytes: 4096, WarnBytes: 1024, CheckInterval: 5 * time.Second},
		"fast":   {LimitBytes: 4096, CheckInterval: 12500 * time.Microsecond},
		"plain":  nil,
	}
	for id, w := range want {
		p := cfg.Process(id)
		if p == nil {
			t.Fatalf("process %s missing", id)
		}
		if !reflect.DeepEqual(p.Memory, w) {
			t.Errorf("%s: memory = %+v, want %+v", id, p.Memory, w)
		}
	}

	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Processes []struct {
			ID     string         `json:"id"`
			Memory map[string]any `json:"memory"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	for _, p := range got.Processes {
		if p.ID != "web" {
			continue
		}
		if p.Memory["checkIntervalMs"] != float64(5000) {
			t.Errorf("JSON web.memory = %v, want checkIntervalMs 5000", p.Memory)
		}
	}
}

// TestHooksNotTemplated (TPL-04, spec §2.11, §2.13): command, cwd and env
// values are rendered when an instance is built; lifecycle hooks are not.
// A placeholder in a hook, even one that resolves to nothing, neither fails
// the build nor is replaced: the hook keeps its literal text (it reads the
// process environment at run time instead). The run-time side (the hook
// executes the literal text) is release.TestHooksRunUntemplated.
func TestHooksNotTemplated(t *testing.T) {
	const (
		quiet = "kill -TSTP -$ROLLBRIDGE_PID {{port}} {{releaseId}}"
		drain = "drain {{ nope }}"
		stop  = "stop {{env.NOT_SET_ANYWHERE}} {{processId}}"
	)
	cfg := mustLoad(t, procs(
		webWith(`cwd: "{{releaseId}}/web", env: {R: "{{releaseId}}", P: "{{port}}"},
     lifecycle: {quietCommand: "`+quiet+`", drainCommand: "`+drain+`", drainTimeoutMs: 1000, stopCommand: "`+stop+`"}`),
	))
	rc := cfg.ReleaseContext("r7", "/srv/demo/r7", "", map[string]int{"web": 18001}, nil)
	web := cfg.Process("web")
	in, err := web.Build(rc, 0)
	if err != nil {
		t.Fatalf("Build with placeholders in hooks: %v", err)
	}
	// Control: the templated fields are rendered.
	env := envMap(in.Env)
	if in.Command != "run web" || in.Cwd != "/srv/demo/r7/r7/web" || env["R"] != "r7" || env["P"] != "18001" {
		t.Errorf("instance = %+v", in)
	}
	wantLife := Lifecycle{QuietCommand: quiet, DrainCommand: drain, DrainTimeout: time.Second, StopCommand: stop}
	if web.Lifecycle != wantLife {
		t.Errorf("lifecycle after Build = %+v, want the literal %+v", web.Lifecycle, wantLife)
	}
	if _, err := web.Spec(rc, 0); err != nil {
		t.Errorf("Spec with placeholders in hooks: %v", err)
	}
	if web.Lifecycle != wantLife {
		t.Errorf("lifecycle after Spec = %+v, want the literal %+v", web.Lifecycle, wantLife)
	}

	// Control: the same unresolvable placeholder in the command does fail.
	web.Command = "run {{ nope }}"
	_, err = web.Build(rc, 0)
	var te *TemplateError
	if !errors.As(err, &te) || te.Field != "command" || err.Error() != "Missing template value for {{ nope }}" {
		t.Errorf("command with {{ nope }}: err = %v", err)
	}
}
