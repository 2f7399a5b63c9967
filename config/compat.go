package config

import (
	"fmt"
	"strings"
)

// IncompatibleChanges lists the changes from old to new that cannot be
// applied to a running daemon (spec §2.15), in the order application,
// control, statePath, proxy.host, proxy.port, proxy.upstreamHost, the proxy
// timeouts (Go additions, fixed when the proxy is created), processes.
// It returns nil when new can be adopted live.
func IncompatibleChanges(old, new *Config) []string {
	var changed []string
	add := func(cond bool, name string) {
		if cond {
			changed = append(changed, name)
		}
	}
	add(old.Application != new.Application, "application")
	add(!sameControl(old.Control, new.Control), "control")
	add(old.StatePath != new.StatePath, "statePath")
	add(old.Proxy.Host != new.Proxy.Host, "proxy.host")
	add(old.Proxy.Port != new.Proxy.Port, "proxy.port")
	add(old.Proxy.UpstreamHost != new.Proxy.UpstreamHost, "proxy.upstreamHost")
	add(old.Proxy.ConnectTimeout != new.Proxy.ConnectTimeout, "proxy.connectTimeoutMs")
	add(old.Proxy.ResponseHeaderTimeout != new.Proxy.ResponseHeaderTimeout, "proxy.responseHeaderTimeoutMs")
	add(old.Proxy.DrainOnShutdown != new.Proxy.DrainOnShutdown, "proxy.drainOnShutdown")
	add(!sameTopology(old.Processes, new.Processes), "processes")
	return changed
}

// IncompatibleError refuses a live reload.
type IncompatibleError struct {
	Changes []string
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("Config changes to %s cannot be applied live; restart the Rollbridge daemon before deploying.", strings.Join(e.Changes, ", "))
}

// CheckCompatible returns an *IncompatibleError when new cannot replace old
// in a running daemon, else nil.
func CheckCompatible(old, new *Config) error {
	if changes := IncompatibleChanges(old, new); len(changes) > 0 {
		return &IncompatibleError{Changes: changes}
	}
	return nil
}

func sameControl(a, b Control) bool {
	return a.Path == b.Path && equalPtr(a.Mode, b.Mode) && equalPtr(a.Owner, b.Owner) && equalPtr(a.Group, b.Group)
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// sameTopology: same number of processes and, for every old id, a new
// process with the same policy, deployStrategy, replicas and port.
func sameTopology(old, new []Process) bool {
	if len(old) != len(new) {
		return false
	}
	byID := make(map[string]*Process, len(new))
	for i := range new {
		byID[new[i].ID] = &new[i]
	}
	for i := range old {
		o := &old[i]
		n, ok := byID[o.ID]
		if !ok || o.Policy != n.Policy || o.DeployStrategy != n.DeployStrategy || o.Replicas != n.Replicas || !equalPtr(o.Port, n.Port) {
			return false
		}
	}
	return true
}
