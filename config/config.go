// Package config loads a Rollbridge config file (rollbridge.js), evaluates it
// with goja (ES modules are converted to CommonJS by esbuild first),
// normalizes it to typed structs with every default of the spec applied,
// validates it (collecting every issue with a fix), and renders the
// per-instance command, working directory and environment from it.
//
// It is the only package that imports goja and esbuild. Nothing it returns
// refers to JavaScript values: callers get plain Go structs, durations as
// time.Duration, signals as syscall.Signal.
package config

import (
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// Issue is one validation problem. Both fields are non-empty.
type Issue struct {
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

// InvalidError is returned by Load when the config evaluated but did not
// validate.
type InvalidError struct {
	Issues []Issue
}

// Error is "Invalid Rollbridge config:" followed by one "  - <message>" line
// per issue (spec §2.1).
func (e *InvalidError) Error() string {
	var b strings.Builder
	b.WriteString("Invalid Rollbridge config:")
	for _, is := range e.Issues {
		b.WriteString("\n  - ")
		b.WriteString(is.Message)
	}
	return b.String()
}

// Config is a normalized, validated Rollbridge config.
type Config struct {
	// Path is the absolute path of the config file.
	Path        string
	Application string
	Control     Control
	Proxy       Proxy
	Processes   []Process
	// ReleaseRetention bounds how many stopped releases are kept.
	ReleaseRetention ReleaseRetention
	// StatePath is where the daemon persists its snapshot; "" = no
	// persistence.
	StatePath string
	// LegacyTakeover is nil when the config does not define it.
	LegacyTakeover *LegacyTakeover
}

// Control configures the daemon's control socket.
type Control struct {
	Path string
	// Mode is applied with chmod after bind; nil leaves the umask result.
	Mode *uint32
	// Owner and Group are applied with chown after bind; nil leaves that
	// side unchanged.
	Owner *Principal
	Group *Principal
}

// Principal is a user or group: a numeric id, or a name resolved when the
// socket is bound (digit-only names are ids then).
type Principal struct {
	// ID is the numeric id when Name is "".
	ID uint32
	// Name is the user or group name; "" means ID is used.
	Name string
}

// String returns the name, or the id in decimal.
func (p Principal) String() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.FormatUint(uint64(p.ID), 10)
}

// Numeric returns the numeric id: ID when no name is given, or the name
// when it consists of digits only (spec §2.3: digit-only strings are ids).
func (p Principal) Numeric() (uint32, bool) {
	if p.Name == "" {
		return p.ID, true
	}
	n, err := strconv.ParseUint(p.Name, 10, 32)
	if err != nil || strings.Trim(p.Name, "0123456789") != "" {
		return 0, false
	}
	return uint32(n), true
}

// Proxy configures the stable listener and defaults shared by processes.
type Proxy struct {
	Host string
	// Port 0 binds an OS-assigned port.
	Port int
	// UpstreamHost is used for port probing, health checks and as the
	// proxy target.
	UpstreamHost string
	// HealthPath and HealthTimeout are the defaults of health.path and
	// health.timeoutMs.
	HealthPath    string
	HealthTimeout time.Duration
	// DrainTimeout is how long a retired release waits for its
	// connections.
	DrainTimeout time.Duration
	// ForceStopTimeout is the default gracefulStopMs, recover's
	// SIGTERM→SIGKILL window and legacyTakeover's default.
	ForceStopTimeout time.Duration
	// ConnectTimeout bounds the proxy's connect to an upstream (0: the
	// proxy's default, 5 s); ResponseHeaderTimeout bounds the wait for a
	// response head (0: unbounded, as the original). Go additions.
	ConnectTimeout        time.Duration
	ResponseHeaderTimeout time.Duration
	// DrainOnShutdown makes a full shutdown (SIGTERM, `rollbridge
	// shutdown`) stop accepting and let in-flight proxied requests finish,
	// bounded by DrainTimeout, before the processes stop (spec §11.3; a Go
	// addition, off by default as the original).
	DrainOnShutdown bool
}

// ReleaseRetention is the stopped-release retention policy.
type ReleaseRetention struct {
	Keep int
	// MaxAge 0 means no age limit.
	MaxAge time.Duration
}

// LegacyTakeover lists pre-Rollbridge processes that predeploy-cleanup stops.
type LegacyTakeover struct {
	Screens          []string
	Processes        []LegacyProcess
	ForceStopTimeout time.Duration
}

// LegacyProcess matches a legacy process whose command line contains every
// string in Includes.
type LegacyProcess struct {
	Name     string
	Includes []string
}

// Policy is a process policy (spec §1.4).
type Policy string

// Process policies.
const (
	Proxied   Policy = "proxied"
	Companion Policy = "companion"
	Singleton Policy = "singleton"
	Service   Policy = "service"
)

// DeployStrategy is how a service is deployed.
type DeployStrategy string

// Deploy strategies.
const (
	Persistent DeployStrategy = "persistent"
	Handoff    DeployStrategy = "handoff"
)

// Process is one entry of processes[] (a definition, not an instance).
type Process struct {
	ID             string
	Command        string
	Policy         Policy
	DeployStrategy DeployStrategy
	// Cwd is the working-directory template; "" means the release path.
	Cwd string
	// User and Group are the account the instances run as (names or
	// numeric ids, not templated); "" keeps the daemon's. Only the system
	// manager, or the exec runner as root, can switch accounts.
	User, Group string
	// Env is the env block (values are templates), in config order.
	Env []EnvVar
	// Port is nil when the process has no port.
	Port *PortRange
	// Health is nil when the check is disabled (health: false or null).
	// It is only used for the proxied process.
	Health *Health
	// StopSignal is sent on a graceful stop; StopSignalName is its name as
	// written in the config (default "SIGTERM").
	StopSignal     syscall.Signal
	StopSignalName string
	GracefulStop   units.Grace
	// RestartDelay is the base crash-restart delay.
	RestartDelay time.Duration
	Restart      Restart
	// Memory is nil when memory supervision is off.
	Memory           *Memory
	Lifecycle        Lifecycle
	NonBlockingDrain bool
	Replicas         int
	// ReplicasAuto: the config said replicas: "auto" (Replicas is then the
	// number of CPUs of the machine that loaded the config).
	ReplicasAuto bool
	OutputLines  int
	// Balance picks among the proxied process's replicas; "" means
	// least-in-flight. Only the proxied process may set it.
	Balance Balance
	// Stickiness keeps a client on one replica of the proxied process; nil
	// when not configured.
	Stickiness *Stickiness
	// DependsOn lists process ids that must be ready before this process
	// starts (in config order, without duplicates).
	DependsOn []string
	// Recycle replaces each instance on a schedule; nil when off.
	Recycle *Recycle
}

// Balance is how the proxy spreads new requests over the proxied process's
// replicas.
type Balance string

// Balance strategies.
const (
	LeastInFlight Balance = "least-in-flight"
	RoundRobin    Balance = "round-robin"
)

// Stickiness keeps a client on the replica that served it first. Exactly one
// of the two is set.
type Stickiness struct {
	// Cookie is the name of the cookie the proxy sets to remember the
	// replica.
	Cookie string
	// ClientIP hashes the client's address over the live replicas.
	ClientIP bool
}

// Recycle replaces an instance gracefully every Every plus a random part of
// Jitter.
type Recycle struct {
	Every  time.Duration
	Jitter time.Duration
}

// Phase is when a process starts during a deploy: persistent services
// first, then the release's processes (handoff services, companions, the
// proxied process), then singletons after the traffic switch. A process may
// only depend on processes of its own or an earlier phase.
func (p *Process) Phase() int {
	switch {
	case p.Policy == Service && p.DeployStrategy == Persistent:
		return 0
	case p.Policy == Singleton:
		return 2
	}
	return 1
}

// EnvVar is one entry of a process env block.
type EnvVar struct {
	Name  string
	Value string
}

// PortRange is an inclusive port range; 0 (either bound) means an
// OS-assigned ephemeral port.
type PortRange struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// Health configures the proxied process's health check.
type Health struct {
	// Path is the HTTP probe path; "" means no HTTP probe (only possible
	// with Notify).
	Path       string
	Timeout    time.Duration
	Interval   time.Duration
	StartDelay time.Duration
	// Notify: the instance is ready when it sends sd_notify READY=1 (the
	// start waits for it, bounded by StartDelay + Timeout).
	Notify bool
}

// Restart is the crash-restart policy (spec §5.4).
type Restart struct {
	// MaxRestarts nil means unlimited; 0 disables automatic restarts.
	MaxRestarts *int
	// Window 0 counts restarts over the process object's whole lifetime.
	Window        time.Duration
	BackoffFactor float64
	// MaxDelay 0 means no cap.
	MaxDelay time.Duration
}

// Memory configures memory supervision.
type Memory struct {
	LimitBytes uint64
	// WarnBytes 0 means no warning.
	WarnBytes     uint64
	CheckInterval time.Duration
	// MaxBytes is the optional hard cgroup backstop (systemd MemoryMax=)
	// above LimitBytes; 0 means none.
	MaxBytes uint64
}

// Lifecycle holds the stop hooks. Hooks are not templated. An empty string
// means the hook is not set.
type Lifecycle struct {
	QuietCommand string
	DrainCommand string
	// DrainTimeout 0 skips the drain step.
	DrainTimeout time.Duration
	// StopCommand replaces sending StopSignal.
	StopCommand string
}

// Summary is the short description `validate --json` prints.
type Summary struct {
	Application string `json:"application"`
	Processes   int    `json:"processes"`
	Proxy       struct {
		Host string `json:"host"`
		Port int    `json:"port"`
	} `json:"proxy"`
}

// Summary returns the application, process count and proxy address.
func (c *Config) Summary() Summary {
	var s Summary
	s.Application = c.Application
	s.Processes = len(c.Processes)
	s.Proxy.Host = c.Proxy.Host
	s.Proxy.Port = c.Proxy.Port
	return s
}

// Proxied returns the proxied process (a valid config has exactly one), or
// nil.
func (c *Config) Proxied() *Process {
	for i := range c.Processes {
		if c.Processes[i].Policy == Proxied {
			return &c.Processes[i]
		}
	}
	return nil
}

// Process returns the process definition with the given id, or nil.
func (c *Config) Process(id string) *Process {
	for i := range c.Processes {
		if c.Processes[i].ID == id {
			return &c.Processes[i]
		}
	}
	return nil
}

// Instance finds the process and replica of an instance id ("web",
// "worker#1"); nil when no process of c has that instance.
func (c *Config) Instance(instanceID string) (*Process, int) {
	for i := range c.Processes {
		d := &c.Processes[i]
		for r := 0; r < d.Replicas; r++ {
			if d.InstanceID(r) == instanceID {
				return d, r
			}
		}
	}
	return nil, 0
}

// InstanceID is the user-visible id of one replica: the process id, or
// "<id>#<replica>" when the process has more than one replica.
func (p *Process) InstanceID(replica int) string {
	return p.Identity("", "", replica).InstanceID()
}

// InstanceIDs lists the ids of all replicas in order.
func (p *Process) InstanceIDs() []string {
	ids := make([]string, p.Replicas)
	for i := range ids {
		ids[i] = p.InstanceID(i)
	}
	return ids
}

// Identity is the runner identity of one replica started for release.
func (p *Process) Identity(app, release string, replica int) units.Identity {
	return units.Identity{App: app, Release: release, Process: p.ID, Replica: replica, Replicas: p.Replicas}
}

// EnvValue returns the template of the named env entry.
func (p *Process) EnvValue(name string) (string, bool) {
	for _, e := range p.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}
