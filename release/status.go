package release

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/config"
)

// Opt is a JSON value that may be omitted (zero), null, or set — the
// original's presence rules (spec conventions: "omitted" vs null).
type Opt[T any] struct {
	set  bool
	null bool
	v    T
}

// Some returns a set value; Null an explicit null.
func Some[T any](v T) Opt[T] { return Opt[T]{set: true, v: v} }

// Null returns an explicit JSON null.
func Null[T any]() Opt[T] { return Opt[T]{set: true, null: true} }

// IsZero makes `omitzero` drop unset values.
func (o Opt[T]) IsZero() bool { return !o.set }

// MarshalJSON renders null or the value.
func (o Opt[T]) MarshalJSON() ([]byte, error) {
	if o.null || !o.set {
		return []byte("null"), nil
	}
	return json.Marshal(o.v)
}

func (o Opt[T]) value() any {
	if !o.set || o.null {
		return nil
	}
	return o.v
}

// LogEntry is one retained output line.
type LogEntry struct {
	At     string `json:"at"`
	Line   string `json:"line"`
	Stream string `json:"stream"`
}

// Child is one process of an instance's memory sample.
type Child struct {
	Command  string `json:"command"`
	PID      int    `json:"pid"`
	RSSBytes uint64 `json:"rssBytes,omitempty"`
}

// ProcessStatus is the process status object of spec §5.9 (keys in the
// original's order), plus the runner unit it lives in.
type ProcessStatus struct {
	Children []Child `json:"children"`
	Command  string  `json:"command"`
	// Connections are the proxy's in-flight exchanges on a proxied replica.
	Connections *Connections `json:"connections,omitempty"`
	Cwd         string       `json:"cwd"`
	ExitCode    Opt[int]     `json:"exitCode,omitzero"`
	ExitSignal  Opt[string]  `json:"exitSignal,omitzero"`
	ID          string       `json:"id"`
	// InRotation tells whether a proxied replica is in its release's pool.
	InRotation          *bool      `json:"inRotation,omitempty"`
	LastMemoryRestartAt string     `json:"lastMemoryRestartAt,omitempty"`
	LastStartReason     string     `json:"lastStartReason,omitempty"`
	Logs                []LogEntry `json:"logs"`
	MemoryRestarts      int        `json:"memoryRestarts"`
	PID                 int        `json:"pid,omitempty"`
	// Port is the instance's own port (each proxied replica has one).
	Port int `json:"port,omitempty"`
	// RestartTimes are the crash times that still count against
	// restart.maxRestarts (spec §5.4); persisted in statePath so a new
	// daemon keeps the restart budget.
	RestartTimes []string `json:"restartTimes,omitempty"`
	Restarts     int      `json:"restarts"`
	RSSBytes     uint64   `json:"rssBytes,omitempty"`
	StartedAt    string   `json:"startedAt,omitempty"`
	State        string   `json:"state"`
	Unit         string   `json:"unit"`
	UptimeMs     *int64   `json:"uptimeMs,omitempty"`
}

// Connections are a release's live proxy connections.
type Connections struct {
	HTTP      int `json:"http"`
	WebSocket int `json:"websocket"`
}

// ReleaseStatus is one release in status (spec §6.5).
type ReleaseStatus struct {
	ActivatedAt     string          `json:"activatedAt,omitempty"`
	ConnectionCount int             `json:"connectionCount"`
	Connections     Connections     `json:"connections"`
	DrainStartedAt  string          `json:"drainStartedAt,omitempty"`
	Ports           map[string]int  `json:"ports"`
	Processes       []ProcessStatus `json:"processes"`
	ReleaseID       string          `json:"releaseId"`
	ReleasePath     string          `json:"releasePath"`
	Revision        string          `json:"revision"`
	State           string          `json:"state"`
	StoppedAt       string          `json:"stoppedAt,omitempty"`
}

// NamedProcess is a service or singleton entry.
type NamedProcess struct {
	ID      string        `json:"id"`
	Process ProcessStatus `json:"process"`
}

// Status is the manager's part of the status object.
type Status struct {
	ActiveReleaseID *string         `json:"activeReleaseId"`
	Releases        []ReleaseStatus `json:"releases"`
	Services        []NamedProcess  `json:"services"`
	Singletons      []NamedProcess  `json:"singletons"`
}

// Status snapshots releases, services and singletons.
func (m *Manager) Status(ctx context.Context) Status {
	m.mu.Lock()
	releases := append([]*releaseRec(nil), m.releases...)
	services := append([]*instance(nil), m.services...)
	singletons := append([]*instance(nil), m.singletons...)
	var active *string
	if m.active != nil {
		id := m.active.id
		active = &id
	}
	m.mu.Unlock()

	st := Status{ActiveReleaseID: active, Releases: []ReleaseStatus{}, Services: []NamedProcess{}, Singletons: []NamedProcess{}}
	for _, r := range releases {
		st.Releases = append(st.Releases, m.releaseStatus(ctx, r))
	}
	for _, s := range services {
		st.Services = append(st.Services, NamedProcess{ID: s.def.Load().ID, Process: m.processStatus(ctx, s, true)})
	}
	for _, s := range singletons {
		st.Singletons = append(st.Singletons, NamedProcess{ID: s.def.Load().ID, Process: m.processStatus(ctx, s, true)})
	}
	return st
}

func (m *Manager) releaseStatus(ctx context.Context, r *releaseRec) ReleaseStatus {
	ins := r.list()
	procs := make([]ProcessStatus, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Go(func() { procs[i] = m.processStatus(ctx, in, true) })
	}
	wg.Wait()
	byUpstream := m.traffic.UpstreamConnections(r.id)
	for i, in := range ins {
		if in.def.Load().Policy != config.Proxied {
			continue
		}
		in.mu.Lock()
		on, addr := in.inRotation, net.JoinHostPort(in.rc.Proxy.UpstreamHost, strconv.Itoa(in.port))
		in.mu.Unlock()
		c := byUpstream[addr]
		procs[i].Connections = &c
		procs[i].InRotation = &on
	}
	h, ws := m.traffic.Connections(r.id)
	r.mu.Lock()
	defer r.mu.Unlock()
	ports := map[string]int{}
	for k, v := range r.ports {
		ports[k] = v
	}
	return ReleaseStatus{
		ActivatedAt:     stamp(r.activatedAt),
		ConnectionCount: h + ws,
		Connections:     Connections{HTTP: h, WebSocket: ws},
		DrainStartedAt:  stamp(r.drainStartedAt),
		Ports:           ports,
		Processes:       procs,
		ReleaseID:       r.id,
		ReleasePath:     r.path,
		Revision:        r.revision,
		State:           r.state,
		StoppedAt:       stamp(r.stoppedAt),
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return Timestamp(t)
}

// logsTimeout bounds reading an instance's retained output for status.
const logsTimeout = 2 * time.Second

func (m *Manager) processStatus(ctx context.Context, in *instance, withLogs bool) ProcessStatus {
	in.mu.Lock()
	ps := ProcessStatus{
		Children:        []Child{},
		Command:         in.built.Command,
		Cwd:             in.built.Cwd,
		ID:              in.id,
		LastStartReason: in.lastStartReason,
		Logs:            []LogEntry{},
		PID:             in.pid,
		Port:            in.port,
		Restarts:        in.restarts,
		StartedAt:       stamp(in.startedAt),
		State:           in.state,
		Unit:            in.unit,
	}
	if in.exited {
		if c := exitCode(in.exit); c != nil {
			ps.ExitCode = Some(c.(int))
		} else {
			ps.ExitCode = Null[int]()
		}
		if s := exitSignal(in.exit); s != nil {
			ps.ExitSignal = Some(s.(string))
		} else {
			ps.ExitSignal = Null[string]()
		}
	}
	if in.state == stateRunning {
		up := m.now().Sub(in.startedAt).Milliseconds()
		ps.UptimeMs = &up
	}
	def := in.def.Load()
	for _, t := range in.restartTimes {
		if def.Restart.Window <= 0 || t.After(m.now().Add(-def.Restart.Window)) {
			ps.RestartTimes = append(ps.RestartTimes, Timestamp(t))
		}
	}
	ps.MemoryRestarts = in.memoryRestarts
	ps.LastMemoryRestartAt = stamp(in.lastMemoryRestartAt)
	if in.children != nil {
		ps.Children = append(ps.Children, in.children...)
	}
	ps.RSSBytes = in.rssBytes
	unit, live, sampled := in.unit, in.pid != 0, def.Memory != nil
	in.mu.Unlock()
	if live && (!sampled || ps.RSSBytes == 0) {
		// Without memory supervision, or before its first sample, still
		// report the current figure.
		sctx, cancel := context.WithTimeout(ctx, logsTimeout)
		if rs, err := m.runner.Status(sctx, unit); err == nil && rs.MemoryBytes > 0 {
			ps.RSSBytes = rs.MemoryBytes
		}
		cancel()
	}
	if withLogs {
		ps.Logs = m.instanceLogs(ctx, in)
	}
	return ps
}

// instanceLogs reads the instance's newest outputLines lines.
func (m *Manager) instanceLogs(ctx context.Context, in *instance) []LogEntry {
	in.mu.Lock()
	unit, n := in.unit, in.def.Load().OutputLines
	in.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, logsTimeout)
	defer cancel()
	lines, err := m.runner.Logs(ctx, unit, n)
	out := make([]LogEntry, 0, len(lines))
	if err != nil {
		return out
	}
	for _, l := range lines {
		out = append(out, LogEntry{At: Timestamp(l.At), Line: l.Line, Stream: string(l.Stream)})
	}
	return out
}
