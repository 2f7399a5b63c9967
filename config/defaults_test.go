package config

import (
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// TestDefaults checks every default of spec §2 on a minimal config without
// application (CFG-04, CFG-05, CFG-08, CFG-10, CFG-12, CFG-22).
func TestDefaults(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "my-app")
	path := writeFile(t, dir, "rollbridge.js", `export default {
  proxy: {},
  processes: [
    {id: "web", policy: "proxied", command: "run web", port: 18000},
    {id: "worker", command: "run worker"}
  ]
}`)
	cfg, err := Load(context.Background(), path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != path {
		t.Errorf("Path = %q, want %q", cfg.Path, path)
	}
	if cfg.Application != "my-app" {
		t.Errorf("Application = %q, want the config directory's name", cfg.Application)
	}
	wantControl := Control{Path: "/tmp/rollbridge-my-app.sock"}
	if !reflect.DeepEqual(cfg.Control, wantControl) {
		t.Errorf("Control = %+v, want %+v", cfg.Control, wantControl)
	}
	wantProxy := Proxy{
		Host: "127.0.0.1", Port: 8182, UpstreamHost: "127.0.0.1", HealthPath: "/ping",
		HealthTimeout: 30 * time.Second, DrainTimeout: 60 * time.Second, ForceStopTimeout: 10 * time.Second,
	}
	if cfg.Proxy != wantProxy {
		t.Errorf("Proxy = %+v, want %+v", cfg.Proxy, wantProxy)
	}
	if cfg.ReleaseRetention != (ReleaseRetention{Keep: 10}) || cfg.StatePath != "" || cfg.LegacyTakeover != nil {
		t.Errorf("retention/state/legacy = %+v %q %+v", cfg.ReleaseRetention, cfg.StatePath, cfg.LegacyTakeover)
	}

	wantWorker := Process{
		ID: "worker", Command: "run worker", Policy: Companion, DeployStrategy: Persistent,
		Env: []EnvVar{}, Health: &Health{Path: "/ping", Timeout: 30 * time.Second, Interval: 250 * time.Millisecond},
		StopSignal: syscall.SIGTERM, StopSignalName: "SIGTERM", GracefulStop: units.Grace{Timeout: 10 * time.Second},
		RestartDelay: time.Second, Restart: Restart{BackoffFactor: 1}, Replicas: 1, OutputLines: 50,
	}
	if got := cfg.Processes[1]; !reflect.DeepEqual(got, wantWorker) {
		t.Errorf("worker =\n %+v\nwant\n %+v", got, wantWorker)
	}
	webProc := cfg.Processes[0]
	if *webProc.Port != (PortRange{18000, 18000}) || webProc.Policy != Proxied {
		t.Errorf("web = %+v", webProc)
	}
	if cfg.Proxied() != &cfg.Processes[0] || cfg.Process("worker") != &cfg.Processes[1] || cfg.Process("nope") != nil {
		t.Error("Proxied/Process lookups")
	}
	s := cfg.Summary()
	if s.Application != "my-app" || s.Processes != 2 || s.Proxy.Host != "127.0.0.1" || s.Proxy.Port != 8182 {
		t.Errorf("Summary = %+v", s)
	}
}

func TestProxyDefaultsFollowSettings(t *testing.T) {
	cases := []struct{ proxy, upstream string }{
		{`{host: "0.0.0.0"}`, "127.0.0.1"},
		{`{host: "::"}`, "127.0.0.1"},
		{`{host: "10.1.2.3"}`, "10.1.2.3"},
		{`{host: "0.0.0.0", upstreamHost: "10.0.0.5"}`, "10.0.0.5"},
		{`{}`, "127.0.0.1"},
	}
	for _, tc := range cases {
		cfg := mustLoad(t, top(`proxy: `+tc.proxy))
		if cfg.Proxy.UpstreamHost != tc.upstream {
			t.Errorf("proxy %s: upstreamHost = %q, want %q", tc.proxy, cfg.Proxy.UpstreamHost, tc.upstream)
		}
	}

	// Process defaults derive from proxy settings.
	cfg := mustLoad(t, `export default {application: "x", proxy: {healthPath: "/up", healthTimeoutMs: 5000, forceStopTimeoutMs: 2500},
  processes: [`+webWith(`health: {intervalMs: 100}`)+`], legacyTakeover: {screens: ["x"]}}`)
	p := cfg.Processes[0]
	if *p.Health != (Health{Path: "/up", Timeout: 5 * time.Second, Interval: 100 * time.Millisecond}) {
		t.Errorf("health = %+v", *p.Health)
	}
	if p.GracefulStop != (units.Grace{Timeout: 2500 * time.Millisecond}) {
		t.Errorf("gracefulStop = %+v", p.GracefulStop)
	}
	if cfg.Proxy.DrainOnShutdown {
		t.Error("proxy.drainOnShutdown defaults to false (the original does not drain on shutdown)")
	}
	if cfg.Proxy.ConnectTimeout != 0 || cfg.Proxy.ResponseHeaderTimeout != 0 {
		t.Errorf("proxy timeouts default to the proxy's own: %v %v", cfg.Proxy.ConnectTimeout, cfg.Proxy.ResponseHeaderTimeout)
	}
	timed := mustLoad(t, `export default {application: "x", proxy: {connectTimeoutMs: 1500, responseHeaderTimeoutMs: 120000, drainOnShutdown: true}, processes: [`+webWith(``)+`]}`)
	if !timed.Proxy.DrainOnShutdown {
		t.Error("proxy.drainOnShutdown: true not read")
	}
	if timed.Proxy.ConnectTimeout != 1500*time.Millisecond || timed.Proxy.ResponseHeaderTimeout != 2*time.Minute {
		t.Errorf("proxy timeouts = %v %v", timed.Proxy.ConnectTimeout, timed.Proxy.ResponseHeaderTimeout)
	}
	if cfg.LegacyTakeover.ForceStopTimeout != 2500*time.Millisecond {
		t.Errorf("legacy forceStop = %v", cfg.LegacyTakeover.ForceStopTimeout)
	}
}

func TestNormalizedValues(t *testing.T) {
	cfg := mustLoad(t, `export default {
  application: "full",
  control: {path: "/run/full.sock", mode: "0o640", owner: 1000, group: "deploy"},
  proxy: {host: "::", port: 0, drainTimeoutMs: 1500.5},
  statePath: "/var/lib/full.json",
  releaseRetention: {keep: 3, maxAgeMs: 60000},
  legacyTakeover: {processes: [{includes: ["/srv/full/", "server"]}, {name: "jobs", includes: ["jobs"]}]},
  processes: [
    {id: "web", policy: "proxied", command: "run", port: {from: 0}, health: false, gracefulStopMs: "indefinite"},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 7000, to: 7099},
     env: {Z: "1", A: "{{port}}", "1": "digit"}, cwd: "backend", stopSignal: "SIGINT", gracefulStopMs: 0, restartDelayMs: 250,
     restart: {maxRestarts: 0, windowMs: 1000, backoffFactor: 1.5, maxDelayMs: 9000},
     memory: {limitBytes: 1048576, warnBytes: 524288, checkIntervalMs: 100},
     lifecycle: {quietCommand: "q", drainCommand: "d", drainTimeoutMs: 5000}},
    {id: "pool", command: "w", replicas: 3, nonBlockingDrain: true, outputLines: 7}
  ]
}`)
	mode := uint32(0o640)
	if !reflect.DeepEqual(cfg.Control, Control{Path: "/run/full.sock", Mode: &mode, Owner: &Principal{ID: 1000}, Group: &Principal{Name: "deploy"}}) {
		t.Errorf("control = %+v", cfg.Control)
	}
	if cfg.Proxy.UpstreamHost != "127.0.0.1" || cfg.Proxy.Port != 0 || cfg.Proxy.DrainTimeout != 1500500*time.Microsecond {
		t.Errorf("proxy = %+v", cfg.Proxy)
	}
	want := &LegacyTakeover{Screens: []string{}, Processes: []LegacyProcess{{Name: "legacy process 1", Includes: []string{"/srv/full/", "server"}}, {Name: "jobs", Includes: []string{"jobs"}}}, ForceStopTimeout: 10 * time.Second}
	if !reflect.DeepEqual(cfg.LegacyTakeover, want) {
		t.Errorf("legacyTakeover = %+v", cfg.LegacyTakeover)
	}
	web, jobs, pool := cfg.Processes[0], cfg.Processes[1], cfg.Processes[2]
	if web.Health != nil || !web.GracefulStop.Indefinite || *web.Port != (PortRange{0, 0}) {
		t.Errorf("web = %+v", web)
	}
	zero := 0
	wantJobs := Process{
		ID: "jobs", Command: "jobs", Policy: Service, DeployStrategy: Handoff, Cwd: "backend",
		Env:  []EnvVar{{"1", "digit"}, {"Z", "1"}, {"A", "{{port}}"}}, // JavaScript key order
		Port: &PortRange{7000, 7099}, Health: jobs.Health,
		StopSignal: syscall.SIGINT, StopSignalName: "SIGINT", GracefulStop: units.Grace{},
		RestartDelay: 250 * time.Millisecond,
		Restart:      Restart{MaxRestarts: &zero, Window: time.Second, BackoffFactor: 1.5, MaxDelay: 9 * time.Second},
		Memory:       &Memory{LimitBytes: 1 << 20, WarnBytes: 1 << 19, CheckInterval: 100 * time.Millisecond},
		Lifecycle:    Lifecycle{QuietCommand: "q", DrainCommand: "d", DrainTimeout: 5 * time.Second},
		Replicas:     1, OutputLines: 50,
	}
	if !reflect.DeepEqual(jobs, wantJobs) {
		t.Errorf("jobs =\n %+v\nwant\n %+v", jobs, wantJobs)
	}
	if v, ok := jobs.EnvValue("A"); !ok || v != "{{port}}" {
		t.Errorf("EnvValue = %q %v", v, ok)
	}
	if pool.Replicas != 3 || !pool.NonBlockingDrain || pool.OutputLines != 7 {
		t.Errorf("pool = %+v", pool)
	}
	if got := pool.InstanceIDs(); !reflect.DeepEqual(got, []string{"pool#0", "pool#1", "pool#2"}) {
		t.Errorf("InstanceIDs = %v", got)
	}
	if web.InstanceID(0) != "web" {
		t.Errorf("web InstanceID = %q", web.InstanceID(0))
	}

	// JSON: spec names, milliseconds, unset fields omitted.
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	procs := got["processes"].([]any)
	checks := map[string][2]any{
		"control.mode":              {got["control"].(map[string]any)["mode"], float64(0o640)},
		"control.owner":             {got["control"].(map[string]any)["owner"], float64(1000)},
		"control.group":             {got["control"].(map[string]any)["group"], "deploy"},
		"proxy.drainTimeoutMs":      {got["proxy"].(map[string]any)["drainTimeoutMs"], 1500.5},
		"web.gracefulStopMs":        {procs[0].(map[string]any)["gracefulStopMs"], "indefinite"},
		"web.health":                {procs[0].(map[string]any)["health"], nil},
		"jobs.restart.maxRestarts":  {procs[1].(map[string]any)["restart"].(map[string]any)["maxRestarts"], float64(0)},
		"jobs.memory.checkInterval": {procs[1].(map[string]any)["memory"].(map[string]any)["checkIntervalMs"], float64(100)},
		"jobs.lifecycle.drain":      {procs[1].(map[string]any)["lifecycle"].(map[string]any)["drainTimeoutMs"], float64(5000)},
		"pool.restart.maxRestarts":  {procs[2].(map[string]any)["restart"].(map[string]any)["maxRestarts"], nil},
		"pool.port":                 {procs[2].(map[string]any)["port"], nil},
		"retention.maxAgeMs":        {got["releaseRetention"].(map[string]any)["maxAgeMs"], float64(60000)},
		"statePath":                 {got["statePath"], "/var/lib/full.json"},
	}
	for name, c := range checks {
		if !reflect.DeepEqual(c[0], c[1]) {
			t.Errorf("JSON %s = %#v, want %#v", name, c[0], c[1])
		}
	}
	pj, err := json.Marshal(&cfg.Processes[1])
	if err != nil || !json.Valid(pj) || !strings.Contains(string(pj), `"env":{"1":"digit","Z":"1","A":"{{port}}"}`) {
		t.Errorf("process JSON = %s (%v)", pj, err)
	}
}

func TestPrincipalNumeric(t *testing.T) {
	cases := []struct {
		p    Principal
		id   uint32
		isID bool
	}{
		{Principal{ID: 7}, 7, true},
		{Principal{Name: "1000"}, 1000, true},
		{Principal{Name: "deploy"}, 0, false},
		{Principal{Name: "+5"}, 0, false},
		{Principal{Name: "99999999999"}, 0, false},
	}
	for _, c := range cases {
		id, ok := c.p.Numeric()
		if id != c.id || ok != c.isID {
			t.Errorf("%+v.Numeric() = %d %v", c.p, id, ok)
		}
	}
	if (Principal{ID: 5}).String() != "5" || (Principal{Name: "x"}).String() != "x" {
		t.Error("String")
	}
}

// TestProcessAccount: user/group reach Process, the runner's Spec and the
// normalized JSON as strings; numbers become their decimal form.
func TestProcessAccount(t *testing.T) {
	cfg := mustLoad(t, procs(webWith(`user: "shop", group: "www-data"`), worker(`user: 1001`), `{id: "plain", command: "run plain"}`))
	cases := []struct{ id, user, group string }{
		{"web", "shop", "www-data"},
		{"worker", "1001", ""},
		{"plain", "", ""},
	}
	rc := cfg.ReleaseContext("r1", "/srv/app/r1", "", map[string]int{"web": 18000}, nil)
	for _, c := range cases {
		p := cfg.Process(c.id)
		if p.User != c.user || p.Group != c.group {
			t.Errorf("%s: User/Group = %q/%q, want %q/%q", c.id, p.User, p.Group, c.user, c.group)
		}
		spec, err := p.Spec(rc, 0)
		if err != nil {
			t.Fatal(err)
		}
		if spec.User != c.user || spec.Group != c.group {
			t.Errorf("%s: Spec User/Group = %q/%q, want %q/%q", c.id, spec.User, spec.Group, c.user, c.group)
		}
		j, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		hasUser, hasGroup := strings.Contains(string(j), `"user":`), strings.Contains(string(j), `"group":`)
		if hasUser != (c.user != "") || hasGroup != (c.group != "") ||
			(c.user != "" && !strings.Contains(string(j), `"user":"`+c.user+`"`)) {
			t.Errorf("%s: JSON = %s", c.id, j)
		}
	}
}
