package config

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/rollbridge/rollbridge/units"
)

// Injected environment variables (spec §2.14). The identity variables shared
// with the runners are defined in package units.
const (
	EnvApplication  = units.EnvApplication
	EnvProcessID    = units.EnvProcessID
	EnvReleaseID    = units.EnvReleaseID
	EnvReleasePath  = "ROLLBRIDGE_RELEASE_PATH"
	EnvRevision     = "ROLLBRIDGE_REVISION"
	EnvReplicaIndex = units.EnvReplicaIndex
	EnvReplicaCount = units.EnvReplicaCount
	EnvPort         = "ROLLBRIDGE_PORT"
)

// ReleaseContext is what an instance is built from besides its process
// definition: the release and the values shared by every process of it.
type ReleaseContext struct {
	Application string
	ReleaseID   string
	ReleasePath string
	// Revision falls back to ReleaseID when empty.
	Revision string
	// Ports maps process id → allocated port for every ported process of
	// this release (persistent services: their stable port). For a
	// proxied process with replicas it is replica 0's port.
	Ports map[string]int
	// ReplicaPorts maps process id → the port of each replica, for
	// processes whose replicas have a port each (the proxied process).
	// {{port}} and ROLLBRIDGE_PORT of replica i are ReplicaPorts[id][i]
	// when present, else Ports[id].
	ReplicaPorts map[string][]int
	// Proxy supplies {{proxy.host}}, {{proxy.port}} (the configured number,
	// even 0) and {{proxy.upstreamHost}}.
	Proxy Proxy
	// Env is the daemon's environment (KEY=VALUE) at build time: the base
	// of every instance environment and the source of {{env.NAME}}. Pass
	// os.Environ(); nil means an empty environment.
	Env []string
}

func (rc ReleaseContext) revision() string {
	if rc.Revision == "" {
		return rc.ReleaseID
	}
	return rc.Revision
}

// ReleaseContext fills a ReleaseContext with the config's application and
// proxy settings.
func (c *Config) ReleaseContext(releaseID, releasePath, revision string, ports map[string]int, env []string) ReleaseContext {
	return ReleaseContext{
		Application: c.Application,
		ReleaseID:   releaseID,
		ReleasePath: releasePath,
		Revision:    revision,
		Ports:       ports,
		Proxy:       c.Proxy,
		Env:         env,
	}
}

// Instance is one rendered process instance.
type Instance struct {
	// ID is the user-visible instance id ("web", "worker#0").
	ID        string
	ProcessID string
	Replica   int
	Replicas  int
	// Command is the rendered command, run with /bin/sh -c.
	Command string
	// Cwd is the rendered working directory: the release path by default;
	// a relative cwd is resolved against the release path.
	Cwd string
	// Env is the complete environment, KEY=VALUE, sorted by key.
	Env []string
	// Port is the instance's port when HasPort.
	Port    int
	HasPort bool
}

// Build renders the instance for replica (0 ≤ replica < Replicas) of p in
// the given release: command, cwd and env values are templated (spec §2.13;
// hooks are not), and the environment is daemon env ← injected ROLLBRIDGE_*
// ← the rendered env block (spec §2.14). A template error is a
// *TemplateError.
func (p *Process) Build(rc ReleaseContext, replica int) (Instance, error) {
	if replica < 0 || replica >= max(p.Replicas, 1) {
		return Instance{}, fmt.Errorf("build %s: replica %d out of range (replicas: %d)", p.ID, replica, p.Replicas)
	}
	port, hasPort := rc.Ports[p.ID]
	if rp := rc.ReplicaPorts[p.ID]; replica < len(rp) {
		port, hasPort = rp[replica], true
	}
	in := Instance{
		ID:        p.InstanceID(replica),
		ProcessID: p.ID,
		Replica:   replica,
		Replicas:  p.Replicas,
		Port:      port,
		HasPort:   hasPort,
	}
	vars := templateVars(rc, p, replica, port, hasPort)

	var err error
	if in.Command, err = renderField(p.Command, vars, "command"); err != nil {
		return Instance{}, err
	}
	in.Cwd = rc.ReleasePath
	if p.Cwd != "" {
		cwd, err := renderField(p.Cwd, vars, "cwd")
		if err != nil {
			return Instance{}, err
		}
		if !filepath.IsAbs(cwd) {
			cwd = filepath.Join(rc.ReleasePath, cwd)
		}
		in.Cwd = cwd
	}

	env := map[string]string{}
	for _, kv := range rc.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	env[EnvApplication] = rc.Application
	env[EnvProcessID] = p.ID
	env[EnvReleaseID] = rc.ReleaseID
	env[EnvReleasePath] = rc.ReleasePath
	env[EnvRevision] = rc.revision()
	env[EnvReplicaIndex] = strconv.Itoa(replica)
	env[EnvReplicaCount] = strconv.Itoa(p.Replicas)
	if hasPort {
		env[EnvPort] = strconv.Itoa(port)
	}
	for id, pt := range rc.Ports {
		env[PortEnvName(id)] = strconv.Itoa(pt)
	}
	for _, e := range p.Env {
		v, err := renderField(e.Value, vars, "env."+e.Name)
		if err != nil {
			return Instance{}, err
		}
		env[e.Name] = v
	}
	in.Env = make([]string, 0, len(env))
	for k, v := range env {
		in.Env = append(in.Env, k+"="+v)
	}
	sort.Strings(in.Env)
	return in, nil
}

func renderField(s string, vars *tplNode, field string) (string, error) {
	out, err := render(s, vars)
	if err != nil {
		if te, ok := err.(*TemplateError); ok {
			te.Field = field
		}
		return "", err
	}
	return out, nil
}

// Spec builds the instance and returns what a runner needs to start it.
func (p *Process) Spec(rc ReleaseContext, replica int) (units.Spec, error) {
	in, err := p.Build(rc, replica)
	if err != nil {
		return units.Spec{}, err
	}
	return units.Spec{
		Identity:    p.Identity(rc.Application, rc.ReleaseID, replica),
		Command:     in.Command,
		Dir:         in.Cwd,
		Env:         in.Env,
		User:        p.User,
		Group:       p.Group,
		StopSignal:  p.StopSignal,
		Grace:       p.GracefulStop,
		OutputLines: p.OutputLines,
	}, nil
}

// PortEnvName is ROLLBRIDGE_<ID>_PORT, where <ID> is the process id with
// every run of non-alphanumeric characters replaced by one "_", upper-cased
// ("background-jobs-main" → ROLLBRIDGE_BACKGROUND_JOBS_MAIN_PORT).
func PortEnvName(id string) string {
	var b strings.Builder
	b.WriteString("ROLLBRIDGE_")
	inRun := false
	for _, r := range id {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteString(strings.ToUpper(string(r)))
			inRun = false
			continue
		}
		if !inRun {
			b.WriteByte('_')
			inRun = true
		}
	}
	b.WriteString("_PORT")
	return b.String()
}
