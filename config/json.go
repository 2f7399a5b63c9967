package config

import (
	"bytes"
	"encoding/json"
	"time"
)

// JSON form of a normalized config: the spec's field names, durations in
// milliseconds, unset optional fields omitted.

type jsonConfig struct {
	Application      string        `json:"application"`
	Control          jsonControl   `json:"control"`
	Proxy            jsonProxy     `json:"proxy"`
	Processes        []jsonProcess `json:"processes"`
	ReleaseRetention jsonRetention `json:"releaseRetention"`
	StatePath        string        `json:"statePath,omitempty"`
	LegacyTakeover   *jsonLegacy   `json:"legacyTakeover,omitempty"`
}

type jsonControl struct {
	Path  string          `json:"path"`
	Mode  *uint32         `json:"mode,omitempty"`
	Owner json.RawMessage `json:"owner,omitempty"`
	Group json.RawMessage `json:"group,omitempty"`
}

type jsonProxy struct {
	Host               string  `json:"host"`
	Port               int     `json:"port"`
	UpstreamHost       string  `json:"upstreamHost"`
	HealthPath         string  `json:"healthPath"`
	HealthTimeoutMs    float64 `json:"healthTimeoutMs"`
	DrainTimeoutMs     float64 `json:"drainTimeoutMs"`
	ForceStopTimeoutMs float64 `json:"forceStopTimeoutMs"`
	// Go additions; absent when 0 (the defaults).
	ConnectTimeoutMs        float64 `json:"connectTimeoutMs,omitempty"`
	ResponseHeaderTimeoutMs float64 `json:"responseHeaderTimeoutMs,omitempty"`
	DrainOnShutdown         bool    `json:"drainOnShutdown,omitempty"`
}

type jsonRetention struct {
	Keep     int     `json:"keep"`
	MaxAgeMs float64 `json:"maxAgeMs"`
}

type jsonLegacy struct {
	Screens            []string            `json:"screens"`
	Processes          []jsonLegacyProcess `json:"processes"`
	ForceStopTimeoutMs float64             `json:"forceStopTimeoutMs"`
}

type jsonLegacyProcess struct {
	Name     string   `json:"name"`
	Includes []string `json:"includes"`
}

type jsonProcess struct {
	ID               string          `json:"id"`
	Command          string          `json:"command"`
	Policy           Policy          `json:"policy"`
	DeployStrategy   DeployStrategy  `json:"deployStrategy"`
	Cwd              string          `json:"cwd,omitempty"`
	User             string          `json:"user,omitempty"`
	Group            string          `json:"group,omitempty"`
	Env              json.RawMessage `json:"env"`
	Port             *PortRange      `json:"port,omitempty"`
	Health           *jsonHealth     `json:"health,omitempty"`
	StopSignal       string          `json:"stopSignal"`
	GracefulStopMs   any             `json:"gracefulStopMs"`
	RestartDelayMs   float64         `json:"restartDelayMs"`
	Restart          jsonRestart     `json:"restart"`
	Memory           *jsonMemory     `json:"memory,omitempty"`
	Lifecycle        jsonLifecycle   `json:"lifecycle"`
	NonBlockingDrain bool            `json:"nonBlockingDrain"`
	Replicas         int             `json:"replicas"`
	OutputLines      int             `json:"outputLines"`
	Balance          Balance         `json:"balance,omitempty"`
	Stickiness       *jsonStickiness `json:"stickiness,omitempty"`
	DependsOn        []string        `json:"dependsOn,omitempty"`
	Recycle          *jsonRecycle    `json:"recycle,omitempty"`
}

type jsonStickiness struct {
	Cookie   string `json:"cookie,omitempty"`
	ClientIP bool   `json:"clientIp,omitempty"`
}

type jsonRecycle struct {
	EveryMs  float64 `json:"everyMs"`
	JitterMs float64 `json:"jitterMs"`
}

type jsonHealth struct {
	Path         string  `json:"path"`
	TimeoutMs    float64 `json:"timeoutMs"`
	IntervalMs   float64 `json:"intervalMs"`
	StartDelayMs float64 `json:"startDelayMs"`
	Notify       bool    `json:"notify,omitempty"`
}

type jsonRestart struct {
	MaxRestarts   *int    `json:"maxRestarts,omitempty"`
	WindowMs      float64 `json:"windowMs"`
	BackoffFactor float64 `json:"backoffFactor"`
	MaxDelayMs    float64 `json:"maxDelayMs"`
}

type jsonMemory struct {
	LimitBytes      uint64  `json:"limitBytes"`
	WarnBytes       uint64  `json:"warnBytes"`
	CheckIntervalMs float64 `json:"checkIntervalMs"`
	MaxBytes        uint64  `json:"maxBytes,omitempty"`
}

type jsonLifecycle struct {
	QuietCommand   string  `json:"quietCommand,omitempty"`
	DrainCommand   string  `json:"drainCommand,omitempty"`
	DrainTimeoutMs float64 `json:"drainTimeoutMs"`
	StopCommand    string  `json:"stopCommand,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// MarshalJSON renders the normalized config with the spec's field names and
// durations in milliseconds.
func (c *Config) MarshalJSON() ([]byte, error) {
	out := jsonConfig{
		Application: c.Application,
		Control: jsonControl{
			Path:  c.Control.Path,
			Mode:  c.Control.Mode,
			Owner: principalJSON(c.Control.Owner),
			Group: principalJSON(c.Control.Group),
		},
		Proxy: jsonProxy{
			Host:                    c.Proxy.Host,
			Port:                    c.Proxy.Port,
			UpstreamHost:            c.Proxy.UpstreamHost,
			HealthPath:              c.Proxy.HealthPath,
			HealthTimeoutMs:         ms(c.Proxy.HealthTimeout),
			DrainTimeoutMs:          ms(c.Proxy.DrainTimeout),
			ForceStopTimeoutMs:      ms(c.Proxy.ForceStopTimeout),
			ConnectTimeoutMs:        ms(c.Proxy.ConnectTimeout),
			ResponseHeaderTimeoutMs: ms(c.Proxy.ResponseHeaderTimeout),
			DrainOnShutdown:         c.Proxy.DrainOnShutdown,
		},
		Processes:        make([]jsonProcess, 0, len(c.Processes)),
		ReleaseRetention: jsonRetention{Keep: c.ReleaseRetention.Keep, MaxAgeMs: ms(c.ReleaseRetention.MaxAge)},
		StatePath:        c.StatePath,
	}
	if lt := c.LegacyTakeover; lt != nil {
		jl := &jsonLegacy{Screens: lt.Screens, Processes: []jsonLegacyProcess{}, ForceStopTimeoutMs: ms(lt.ForceStopTimeout)}
		for _, p := range lt.Processes {
			jl.Processes = append(jl.Processes, jsonLegacyProcess(p))
		}
		out.LegacyTakeover = jl
	}
	for i := range c.Processes {
		jp, err := c.Processes[i].toJSON()
		if err != nil {
			return nil, err
		}
		out.Processes = append(out.Processes, jp)
	}
	return json.Marshal(out)
}

// MarshalJSON renders one process definition like Config.MarshalJSON does.
func (p *Process) MarshalJSON() ([]byte, error) {
	jp, err := p.toJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(jp)
}

func (p *Process) toJSON() (jsonProcess, error) {
	env, err := envJSON(p.Env)
	if err != nil {
		return jsonProcess{}, err
	}
	jp := jsonProcess{
		ID:               p.ID,
		Command:          p.Command,
		Policy:           p.Policy,
		DeployStrategy:   p.DeployStrategy,
		Cwd:              p.Cwd,
		User:             p.User,
		Group:            p.Group,
		Env:              env,
		Port:             p.Port,
		StopSignal:       p.StopSignalName,
		GracefulStopMs:   ms(p.GracefulStop.Timeout),
		RestartDelayMs:   ms(p.RestartDelay),
		Restart:          jsonRestart{MaxRestarts: p.Restart.MaxRestarts, WindowMs: ms(p.Restart.Window), BackoffFactor: p.Restart.BackoffFactor, MaxDelayMs: ms(p.Restart.MaxDelay)},
		Lifecycle:        jsonLifecycle{QuietCommand: p.Lifecycle.QuietCommand, DrainCommand: p.Lifecycle.DrainCommand, DrainTimeoutMs: ms(p.Lifecycle.DrainTimeout), StopCommand: p.Lifecycle.StopCommand},
		NonBlockingDrain: p.NonBlockingDrain,
		Replicas:         p.Replicas,
		OutputLines:      p.OutputLines,
		Balance:          p.Balance,
		DependsOn:        p.DependsOn,
	}
	if st := p.Stickiness; st != nil {
		jp.Stickiness = &jsonStickiness{Cookie: st.Cookie, ClientIP: st.ClientIP}
	}
	if r := p.Recycle; r != nil {
		jp.Recycle = &jsonRecycle{EveryMs: ms(r.Every), JitterMs: ms(r.Jitter)}
	}
	if p.GracefulStop.Indefinite {
		jp.GracefulStopMs = "indefinite"
	}
	if h := p.Health; h != nil {
		jp.Health = &jsonHealth{Path: h.Path, TimeoutMs: ms(h.Timeout), IntervalMs: ms(h.Interval), StartDelayMs: ms(h.StartDelay), Notify: h.Notify}
	}
	if m := p.Memory; m != nil {
		jp.Memory = &jsonMemory{LimitBytes: m.LimitBytes, WarnBytes: m.WarnBytes, CheckIntervalMs: ms(m.CheckInterval), MaxBytes: m.MaxBytes}
	}
	return jp, nil
}

// envJSON keeps the env block's order (a Go map would sort it).
func envJSON(env []EnvVar) (json.RawMessage, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range env {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(e.Name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(e.Value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func principalJSON(p *Principal) json.RawMessage {
	if p == nil {
		return nil
	}
	var b []byte
	if p.Name != "" {
		b, _ = json.Marshal(p.Name)
	} else {
		b, _ = json.Marshal(p.ID)
	}
	return b
}

// MarshalJSON renders a principal as its name or numeric id.
func (p Principal) MarshalJSON() ([]byte, error) { return principalJSON(&p), nil }
