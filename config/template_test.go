package config

import (
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func testRelease() ReleaseContext {
	return ReleaseContext{
		Application: "shop",
		ReleaseID:   "r42",
		ReleasePath: "/srv/shop/releases/r42",
		Revision:    "abc123",
		Ports:       map[string]int{"web": 18001, "beacon": 7430, "background-jobs-main": 7431},
		Proxy:       Proxy{Host: "0.0.0.0", Port: 0, UpstreamHost: "127.0.0.1"},
		Env:         []string{"HOME=/root", "DATABASE_URL=postgres://db", "EMPTY=", "NOEQUALS"},
	}
}

func TestRender(t *testing.T) {
	p := &Process{ID: "web", Replicas: 1}
	vars := templateVars(testRelease(), p, 0, 18001, true)
	cases := []struct{ in, want string }{
		{"--port {{port}}", "--port 18001"},
		{"--port {{ port }}", "--port 18001"},
		{"--port {{\tport\n}}", "--port 18001"},
		{"{{application}}/{{releaseId}}/{{revision}}/{{releasePath}}", "shop/r42/abc123//srv/shop/releases/r42"},
		{"{{processId}} {{replicaIndex}}/{{replicaCount}}", "web 0/1"},
		{"{{ports.beacon}},{{ports.background-jobs-main}}", "7430,7431"},
		{"{{proxy.host}}:{{proxy.port}} via {{proxy.upstreamHost}}", "0.0.0.0:0 via 127.0.0.1"},
		{"{{env.DATABASE_URL}}|{{env.EMPTY}}|", "postgres://db||"},
		// Text that does not match the placeholder pattern is left as is.
		{"{{ bad key }} {{}} {{port} {port}} { {port} } ${HOME} {{pört}} {{a/b}}", "{{ bad key }} {{}} {{port} {port}} { {port} } ${HOME} {{pört}} {{a/b}}"},
		{"{{{port}}}", "{18001}"},
		{"no placeholders", "no placeholders"},
		{"", ""},
	}
	for _, c := range cases {
		got, err := render(c.in, vars)
		if err != nil || got != c.want {
			t.Errorf("render(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestRenderErrors(t *testing.T) {
	p := &Process{ID: "worker", Replicas: 1}
	vars := templateVars(testRelease(), p, 0, 0, false)
	cases := []struct{ in, want string }{
		{"--port {{port}}", "Missing template value for {{port}}"},
		{"x {{ nope }} y", "Missing template value for {{ nope }}"},
		{"{{ports.unknown}}", "Missing template value for {{ports.unknown}}"},
		{"{{env.UNSET_VAR}}", "Missing template value for {{env.UNSET_VAR}}"},
		{"{{env.NOEQUALS}}", "Missing template value for {{env.NOEQUALS}}"},
		{"{{application.length}}", "Missing template value for {{application.length}}"},
		{"{{ports..web}}", "Missing template value for {{ports..web}}"},
		{"{{ports}}", "Template value for {{ports}} is an object; use one of its fields, e.g. {{ports.background-jobs-main}}"},
		{"{{ proxy }}", "Template value for {{ proxy }} is an object; use one of its fields, e.g. {{proxy.host}}"},
		{"{{env}}", "Template value for {{env}} is an object; use one of its fields, e.g. {{env.DATABASE_URL}}"},
	}
	for _, c := range cases {
		_, err := render(c.in, vars)
		var te *TemplateError
		if !errors.As(err, &te) || err.Error() != c.want {
			t.Errorf("render(%q) error = %v; want %q", c.in, err, c.want)
		}
	}
}

func TestBuildInstance(t *testing.T) {
	cfg := mustLoad(t, `export default {
  application: "shop",
  proxy: {host: "0.0.0.0", port: 4600},
  processes: [
    {id: "beacon", policy: "service", command: "beacon --port {{port}}", port: 7430, cwd: "{{releasePath}}/backend",
     env: {BEACON_PORT: "{{port}}", ROLLBRIDGE_APPLICATION: "overridden"}},
    {id: "background-jobs-main", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 7431, to: 7499}, cwd: "backend"},
    {id: "background-jobs-worker", command: "worker {{replicaIndex}}/{{replicaCount}}", replicas: 3, cwd: "/abs/dir",
     env: {SLOT: "{{processId}}:{{replicaIndex}}", JOBS: "{{ports.background-jobs-main}}", HOME: "/home/worker"},
     lifecycle: {quietCommand: "kill -TSTP -$ROLLBRIDGE_PID {{port}}"}},
    {id: "web", policy: "proxied", command: "web --port {{port}} --beacon {{ports.beacon}}", port: {from: 14600, to: 14699}}
  ]
}`)
	rc := cfg.ReleaseContext("r1", "/srv/shop/r1", "", map[string]int{"beacon": 7430, "background-jobs-main": 7433, "web": 14601}, []string{"HOME=/root", "PATH=/usr/bin", "ROLLBRIDGE_PORT=stale"})

	worker, err := cfg.Process("background-jobs-worker").Build(rc, 2)
	if err != nil {
		t.Fatal(err)
	}
	if worker.ID != "background-jobs-worker#2" || worker.ProcessID != "background-jobs-worker" || worker.Replica != 2 || worker.Replicas != 3 {
		t.Errorf("identity = %+v", worker)
	}
	if worker.Command != "worker 2/3" || worker.Cwd != "/abs/dir" || worker.HasPort {
		t.Errorf("worker = %+v", worker)
	}
	wantEnv := []string{
		"HOME=/home/worker", // user env wins over the daemon env
		"JOBS=7433",
		"PATH=/usr/bin",
		"ROLLBRIDGE_APPLICATION=shop",
		"ROLLBRIDGE_BACKGROUND_JOBS_MAIN_PORT=7433",
		"ROLLBRIDGE_BEACON_PORT=7430",
		"ROLLBRIDGE_PORT=stale", // not ported: no injected ROLLBRIDGE_PORT, the daemon's value is untouched
		"ROLLBRIDGE_PROCESS_ID=background-jobs-worker",
		"ROLLBRIDGE_RELEASE_ID=r1",
		"ROLLBRIDGE_RELEASE_PATH=/srv/shop/r1",
		"ROLLBRIDGE_REPLICA_COUNT=3",
		"ROLLBRIDGE_REPLICA_INDEX=2",
		"ROLLBRIDGE_REVISION=r1", // revision falls back to the release id
		"ROLLBRIDGE_WEB_PORT=14601",
		"SLOT=background-jobs-worker:2",
	}
	if !reflect.DeepEqual(worker.Env, wantEnv) {
		t.Errorf("worker env =\n %q\nwant\n %q", worker.Env, wantEnv)
	}

	beacon, err := cfg.Process("beacon").Build(rc, 0)
	if err != nil {
		t.Fatal(err)
	}
	if beacon.Command != "beacon --port 7430" || beacon.Cwd != "/srv/shop/r1/backend" || !beacon.HasPort || beacon.Port != 7430 || beacon.ID != "beacon" {
		t.Errorf("beacon = %+v", beacon)
	}
	env := envMap(beacon.Env)
	if env["ROLLBRIDGE_PORT"] != "7430" || env["BEACON_PORT"] != "7430" || env["ROLLBRIDGE_APPLICATION"] != "overridden" {
		t.Errorf("beacon env = %v", env)
	}
	if !sort.StringsAreSorted(beacon.Env) {
		t.Error("env not sorted")
	}

	jobs, err := cfg.Process("background-jobs-main").Build(rc, 0)
	if err != nil || jobs.Cwd != "/srv/shop/r1/backend" {
		t.Errorf("relative cwd = %q, %v", jobs.Cwd, err)
	}
	webInst, err := cfg.Proxied().Build(rc, 0)
	if err != nil || webInst.Command != "web --port 14601 --beacon 7430" || webInst.Cwd != "/srv/shop/r1" {
		t.Errorf("web = %+v, %v", webInst, err)
	}

	spec, err := cfg.Process("background-jobs-worker").Spec(rc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Identity.InstanceID() != "background-jobs-worker#1" || spec.Identity.App != "shop" || spec.Identity.Release != "r1" ||
		spec.Dir != "/abs/dir" || spec.Command != "worker 1/3" || spec.StopSignal != cfg.Process("background-jobs-worker").StopSignal || spec.OutputLines != 50 {
		t.Errorf("spec = %+v", spec)
	}

	if _, err := cfg.Process("web").Build(rc, 1); err == nil {
		t.Error("replica out of range accepted")
	}
	// Missing port for a ported process → template error, naming the field.
	rc.Ports = map[string]int{}
	_, err = cfg.Process("beacon").Build(rc, 0)
	var te *TemplateError
	if !errors.As(err, &te) || te.Field != "command" || err.Error() != "Missing template value for {{port}}" {
		t.Errorf("error = %v (%+v)", err, te)
	}
	cfg.Processes[0].Command = "ok"
	_, err = cfg.Process("beacon").Build(rc, 0)
	if !errors.As(err, &te) || te.Field != "env.BEACON_PORT" {
		t.Errorf("env error = %v (%+v)", err, te)
	}
	cfg.Processes[1].Cwd = "{{nope}}"
	_, err = cfg.Processes[1].Build(rc, 0)
	if !errors.As(err, &te) || te.Field != "cwd" {
		t.Errorf("cwd error = %v", err)
	}
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func TestPortEnvName(t *testing.T) {
	cases := map[string]string{
		"background-jobs-main": "ROLLBRIDGE_BACKGROUND_JOBS_MAIN_PORT",
		"web":                  "ROLLBRIDGE_WEB_PORT",
		"a--b..c":              "ROLLBRIDGE_A_B_C_PORT",
		"-edge-":               "ROLLBRIDGE__EDGE__PORT",
		"v2_api":               "ROLLBRIDGE_V2_API_PORT",
		"ünï":                  "ROLLBRIDGE__N__PORT",
	}
	for id, want := range cases {
		if got := PortEnvName(id); got != want {
			t.Errorf("PortEnvName(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestIncompatibleChanges(t *testing.T) {
	base := `{application: "a", control: {path: "/tmp/a.sock", mode: "660"}, statePath: "/tmp/s.json",
  proxy: {host: "127.0.0.1", port: 8182}, processes: [` + web + `, ` + worker(`replicas: 2`) + `]}`
	old := mustLoad(t, "export default "+base)
	variant := func(patch string) *Config {
		return mustLoad(t, "const c = "+base+"\n"+patch+"\nexport default c\n")
	}
	cases := []struct {
		patch string
		want  []string
	}{
		{``, nil},
		{`c.proxy.healthPath = "/up"; c.proxy.drainTimeoutMs = 1; c.releaseRetention = {keep: 1}; c.processes[1].command = "new"; c.processes[1].env = {A: "1"}`, nil},
		{`c.processes.reverse()`, nil},
		{`c.application = "b"`, []string{"application"}},
		{`c.control.mode = "600"`, []string{"control"}},
		{`c.control.owner = 0`, []string{"control"}},
		{`c.control.path = "/tmp/b.sock"`, []string{"control"}},
		{`delete c.statePath`, []string{"statePath"}},
		{`c.proxy.host = "0.0.0.0"`, []string{"proxy.host"}},
		{`c.proxy.port = 9000`, []string{"proxy.port"}},
		{`c.proxy.upstreamHost = "10.0.0.1"`, []string{"proxy.upstreamHost"}},
		{`c.proxy.connectTimeoutMs = 1000`, []string{"proxy.connectTimeoutMs"}},
		{`c.proxy.responseHeaderTimeoutMs = 30000`, []string{"proxy.responseHeaderTimeoutMs"}},
		{`c.proxy.drainOnShutdown = true`, []string{"proxy.drainOnShutdown"}},
		{`c.processes[1].replicas = 3`, []string{"processes"}},
		{`c.processes[1].policy = "singleton"; c.processes[1].replicas = 1`, []string{"processes"}},
		{`c.processes[0].port = {from: 18000, to: 18100}`, []string{"processes"}},
		{`c.processes[1].id = "worker2"`, []string{"processes"}},
		{`c.processes.push({id: "extra", command: "x"})`, []string{"processes"}},
		{`c.application = "b"; c.control = {path: "/x"}; c.statePath = "/y"; c.proxy = {host: "::", port: 1, upstreamHost: "h"}; c.processes.pop()`,
			[]string{"application", "control", "statePath", "proxy.host", "proxy.port", "proxy.upstreamHost", "processes"}},
	}
	for _, c := range cases {
		got := IncompatibleChanges(old, variant(c.patch))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("patch %q: changes = %q, want %q", c.patch, got, c.want)
		}
	}
	err := CheckCompatible(old, variant(`c.application = "b"; c.proxy.host = "::"; c.processes.pop()`))
	want := "Config changes to application, proxy.host, processes cannot be applied live; restart the Rollbridge daemon before deploying."
	var ie *IncompatibleError
	if !errors.As(err, &ie) || err.Error() != want {
		t.Fatalf("CheckCompatible = %v, want %q", err, want)
	}
	if CheckCompatible(old, old) != nil {
		t.Fatal("identical configs reported incompatible")
	}
}
