package config

import (
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rollbridge/rollbridge/units"
)

// Defaults of spec §2 (Appendix C).
const (
	DefaultProxyHost          = "127.0.0.1"
	DefaultProxyPort          = 8182
	DefaultHealthPath         = "/ping"
	DefaultHealthTimeout      = 30 * time.Second
	DefaultDrainTimeout       = 60 * time.Second
	DefaultForceStopTimeout   = 10 * time.Second
	DefaultHealthInterval     = 250 * time.Millisecond
	DefaultRestartDelay       = time.Second
	DefaultOutputLines        = 50
	DefaultMemoryInterval     = 5 * time.Second
	DefaultReleaseRetention   = 10
	DefaultStopSignal         = "SIGTERM"
	maxPort                   = 65535
	maxSafeInteger            = 1 << 53
	policyList                = "proxied, companion, singleton, service"
	strategyList              = "persistent, handoff"
	portRangeMessage          = "must be a positive port or valid {from, to} range"
	portBoundsMessage         = "must be an integer between 0 and 65535"
	examplePortRange          = "{from: 18000, to: 18099}"
	defaultControlPathPattern = "/tmp/rollbridge-%s.sock"
)

// DefaultControlPath is the control socket path used when control.path is
// not set.
func DefaultControlPath(application string) string {
	return fmt.Sprintf(defaultControlPathPattern, application)
}

// normalizer collects issues while building a Config.
type normalizer struct {
	issues []Issue
}

func (n *normalizer) add(message, fix string) {
	n.issues = append(n.issues, Issue{Message: message, Fix: fix})
}

// normalize applies spec §2 to the exported value. absPath is the config
// file's absolute path (for the application default). The returned config
// is only meaningful when no issues are returned.
func normalize(raw *value, absPath string) (*Config, []Issue) {
	n := &normalizer{}
	src := raw
	if !raw.isObject() {
		n.add("Config must be an object",
			`Export a default config object with application, proxy and processes keys, e.g. export default {proxy: {port: 8182}, processes: [{id: "web", policy: "proxied", command: "node server.js --port {{port}}", port: {from: 18000, to: 18099}}]}.`)
		src = &value{kind: kindObject, fields: map[string]*value{}}
	}

	cfg := &Config{Path: absPath}
	cfg.Application, _ = n.str(src.get("application"), "application", filepath.Base(filepath.Dir(absPath)), true)
	if src.get("application").kind == kindString && strings.TrimSpace(cfg.Application) == "" {
		n.add("application must not be empty",
			`Set application to the name of your app, e.g. application: "shop", or remove it to use the config directory's name.`)
	}
	proxySrc := n.object(src.get("proxy"), "proxy", false)
	controlSrc := n.object(src.get("control"), "control", true)
	processesSrc := src.get("processes")
	if processesSrc.kind != kindArray {
		n.add("processes must be an array", "Set processes to a list of process definitions, e.g. processes: "+exampleFor("processes")+".")
		processesSrc = &value{kind: kindArray}
	}

	cfg.Proxy = n.proxy(proxySrc)
	cfg.Control = n.control(controlSrc, cfg.Application)
	for i, p := range processesSrc.items {
		cfg.Processes = append(cfg.Processes, n.process(p, i, cfg.Proxy))
	}
	cfg.ReleaseRetention = n.releaseRetention(n.object(src.get("releaseRetention"), "releaseRetention", true))
	if sp := src.get("statePath"); !sp.unset() {
		cfg.StatePath, _ = n.str(sp, "statePath", "", false)
	}
	cfg.LegacyTakeover = n.legacyTakeover(src.get("legacyTakeover"), cfg.Proxy)

	n.processSet(cfg.Processes)
	if len(n.issues) > 0 {
		return nil, n.issues
	}
	return cfg, nil
}

func (n *normalizer) proxy(src *value) Proxy {
	var p Proxy
	p.Host, _ = n.str(src.get("host"), "proxy.host", DefaultProxyHost, true)
	p.Port = n.listenPort(src.get("port"), "proxy.port")
	upstream := p.Host
	if p.Host == "0.0.0.0" || p.Host == "::" {
		upstream = "127.0.0.1"
	}
	p.UpstreamHost, _ = n.str(src.get("upstreamHost"), "proxy.upstreamHost", upstream, true)
	p.HealthPath, _ = n.str(src.get("healthPath"), "proxy.healthPath", DefaultHealthPath, true)
	p.HealthTimeout = n.duration(src.get("healthTimeoutMs"), "proxy.healthTimeoutMs", DefaultHealthTimeout)
	p.DrainTimeout = n.duration(src.get("drainTimeoutMs"), "proxy.drainTimeoutMs", DefaultDrainTimeout)
	p.ForceStopTimeout = n.duration(src.get("forceStopTimeoutMs"), "proxy.forceStopTimeoutMs", DefaultForceStopTimeout)
	p.ConnectTimeout = n.nonNegativeDuration(src.get("connectTimeoutMs"), "proxy.connectTimeoutMs", 0)
	p.ResponseHeaderTimeout = n.nonNegativeDuration(src.get("responseHeaderTimeoutMs"), "proxy.responseHeaderTimeoutMs", 0)
	p.DrainOnShutdown = n.boolean(src.get("drainOnShutdown"), "proxy.drainOnShutdown", false)
	return p
}

// listenPort validates proxy.port (a number; CFG-29 adds the 0–65535 bound).
func (n *normalizer) listenPort(v *value, key string) int {
	f, ok := n.num(v, key, DefaultProxyPort, true)
	if !ok {
		return DefaultProxyPort
	}
	if !isPort(f) {
		n.add(key+" "+portBoundsMessage, fmt.Sprintf("Set %s to a whole TCP port number from 0 to 65535 (0 picks a free port), e.g. port: 8182.", key))
		return DefaultProxyPort
	}
	return int(f)
}

func (n *normalizer) control(src *value, application string) Control {
	var c Control
	c.Path, _ = n.str(src.get("path"), "control.path", DefaultControlPath(application), true)
	c.Mode = n.socketMode(src.get("mode"), "control.mode")
	c.Owner = n.principal(src.get("owner"), "control.owner", "user")
	c.Group = n.principal(src.get("group"), "control.group", "group")
	return c
}

// socketMode accepts an integer 0…0o777 or an octal string with an optional
// "0o" prefix and 1–4 octal digits (spec §2.3). The number 660 is decimal
// and therefore rejected.
func (n *normalizer) socketMode(v *value, key string) *uint32 {
	if v.unset() {
		return nil
	}
	mode := -1.0
	switch v.kind {
	case kindNumber:
		if isInteger(v.num) {
			mode = v.num
		}
	case kindString:
		digits := strings.TrimPrefix(v.str, "0o")
		if len(digits) >= 1 && len(digits) <= 4 && strings.Trim(digits, "01234567") == "" {
			m, _ := strconv.ParseUint(digits, 8, 32)
			mode = float64(m)
		}
	}
	if mode < 0 || mode > 0o777 {
		n.add(key+" must be an octal file mode between 0 and 0o777",
			fmt.Sprintf(`Set %s to an octal permission string or an octal number, e.g. mode: "660" or mode: 0o660 (the number 660 is decimal and too large).`, key))
		return nil
	}
	m := uint32(mode)
	return &m
}

func (n *normalizer) principal(v *value, key, what string) *Principal {
	if v.unset() {
		return nil
	}
	switch v.kind {
	case kindNumber:
		if isInteger(v.num) && v.num >= 0 && v.num <= math.MaxUint32 {
			return &Principal{ID: uint32(v.num)}
		}
	case kindString:
		if v.str != "" {
			return &Principal{Name: v.str}
		}
	}
	n.add(key+" must be a non-negative integer id or a name",
		fmt.Sprintf(`Set %s to a numeric %s id such as 1000 or a %s name such as "deploy".`, key, what, what))
	return nil
}

func (n *normalizer) releaseRetention(src *value) ReleaseRetention {
	var r ReleaseRetention
	keep, ok := n.num(src.get("keep"), "releaseRetention.keep", DefaultReleaseRetention, true)
	r.Keep = DefaultReleaseRetention
	if ok {
		if keep < 0 || !isInteger(keep) {
			n.add("releaseRetention.keep must be a non-negative integer",
				"Set releaseRetention.keep to how many stopped releases to keep, e.g. keep: 10 (0 keeps none).")
		} else {
			r.Keep = int(keep)
		}
	}
	r.MaxAge = n.nonNegativeDuration(src.get("maxAgeMs"), "releaseRetention.maxAgeMs", 0)
	return r
}

func (n *normalizer) legacyTakeover(v *value, proxy Proxy) *LegacyTakeover {
	if v.unset() {
		return nil
	}
	if !v.isObject() {
		n.add("legacyTakeover must be an object",
			`Set legacyTakeover to an object listing the legacy processes to stop, e.g. legacyTakeover: {screens: ["shop"]}.`)
		return nil
	}
	lt := &LegacyTakeover{Screens: []string{}, Processes: []LegacyProcess{}}
	if s := v.get("screens"); !s.unset() {
		if s.kind != kindArray {
			n.add("legacyTakeover.screens must be an array",
				`Set legacyTakeover.screens to a list of GNU screen session names, e.g. screens: ["shop"].`)
		} else {
			for i, it := range s.items {
				key := fmt.Sprintf("legacyTakeover.screens[%d]", i)
				if it.kind != kindString || it.str == "" {
					n.add(key+" must be a non-empty string", fmt.Sprintf(`Set %s to a screen session name, e.g. "shop".`, key))
					continue
				}
				lt.Screens = append(lt.Screens, it.str)
			}
		}
	}
	if p := v.get("processes"); !p.unset() {
		if p.kind != kindArray {
			n.add("legacyTakeover.processes must be an array",
				`Set legacyTakeover.processes to a list of matchers, e.g. processes: [{name: "legacy web", includes: ["/srv/shop/", "server"]}].`)
		} else {
			for i, it := range p.items {
				if m, ok := n.legacyProcess(it, i); ok {
					lt.Processes = append(lt.Processes, m)
				}
			}
		}
	}
	lt.ForceStopTimeout = n.nonNegativeDuration(v.get("forceStopTimeoutMs"), "legacyTakeover.forceStopTimeoutMs", proxy.ForceStopTimeout)
	if len(lt.Screens) == 0 && len(lt.Processes) == 0 {
		n.add("legacyTakeover must define at least one screen or process matcher",
			`Add a screen name or a process matcher, e.g. legacyTakeover: {screens: ["shop"]} or {processes: [{includes: ["/srv/shop/", "server"]}]}, or remove legacyTakeover.`)
	}
	return lt
}

func (n *normalizer) legacyProcess(v *value, i int) (LegacyProcess, bool) {
	key := fmt.Sprintf("legacyTakeover.processes[%d]", i)
	if !v.isObject() {
		n.add(key+" must be an object", fmt.Sprintf(`Set %s to a matcher object, e.g. {name: "legacy web", includes: ["/srv/shop/", "server"]}.`, key))
		return LegacyProcess{}, false
	}
	m := LegacyProcess{Includes: []string{}}
	m.Name, _ = n.str(v.get("name"), key+".name", fmt.Sprintf("legacy process %d", i+1), true)
	ok := true
	inc := v.get("includes")
	switch {
	case inc.unset() || (inc.kind == kindArray && len(inc.items) == 0):
		n.add(key+".includes must contain at least one matcher",
			fmt.Sprintf(`Set %s.includes to the strings a legacy command line contains, e.g. includes: ["/srv/shop/", "server --port 8080"].`, key))
		ok = false
	case inc.kind != kindArray:
		n.add(key+".includes must be an array",
			fmt.Sprintf(`Set %s.includes to a list of strings, e.g. includes: ["/srv/shop/", "server"].`, key))
		ok = false
	default:
		for j, it := range inc.items {
			ik := fmt.Sprintf("%s.includes[%d]", key, j)
			if it.kind != kindString || it.str == "" {
				n.add(ik+" must be a non-empty string", fmt.Sprintf(`Set %s to a string the legacy command line contains, e.g. "server --port 8080".`, ik))
				ok = false
				continue
			}
			m.Includes = append(m.Includes, it.str)
		}
	}
	return m, ok
}

// process normalizes processes[i]; fields in the order of spec §2.7.
func (n *normalizer) process(v *value, i int, proxy Proxy) Process {
	key := fmt.Sprintf("processes[%d]", i)
	p := Process{
		Policy:         Companion,
		DeployStrategy: Persistent,
		Env:            []EnvVar{},
		StopSignal:     mustSignal(DefaultStopSignal),
		StopSignalName: DefaultStopSignal,
		GracefulStop:   units.Grace{Timeout: proxy.ForceStopTimeout},
		RestartDelay:   DefaultRestartDelay,
		Restart:        Restart{BackoffFactor: 1},
		Replicas:       1,
		OutputLines:    DefaultOutputLines,
	}
	if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf(`Define %s as an object with id, policy and command, e.g. {id: "worker", policy: "companion", command: "node worker.js"}.`, key))
		return p
	}

	var ok bool
	if p.ID, ok = n.str(v.get("id"), key+".id", "", false); ok && strings.TrimSpace(p.ID) == "" {
		n.add(key+".id must not be empty", fmt.Sprintf(`Give %s a unique, non-empty id, e.g. id: "worker".`, key))
	}
	if p.Command, ok = n.str(v.get("command"), key+".command", "", false); ok && strings.TrimSpace(p.Command) == "" {
		n.add(key+".command must not be empty", fmt.Sprintf(`Set %s.command to the shell command that starts the process, e.g. command: "node server.js --port {{port}}".`, key))
	}
	if s, ok := n.str(v.get("policy"), key+".policy", string(Companion), true); ok {
		switch Policy(s) {
		case Proxied, Companion, Singleton, Service:
			p.Policy = Policy(s)
		default:
			n.add(key+".policy must be one of: "+policyList,
				fmt.Sprintf(`Set %s.policy to one of: %s, e.g. policy: "companion".`, key, policyList))
		}
	}
	if s, ok := n.str(v.get("deployStrategy"), key+".deployStrategy", string(Persistent), true); ok {
		switch DeployStrategy(s) {
		case Persistent, Handoff:
			p.DeployStrategy = DeployStrategy(s)
		default:
			n.add(key+".deployStrategy must be one of: "+strategyList,
				fmt.Sprintf(`Set %s.deployStrategy to one of: %s, e.g. deployStrategy: "handoff" (services only).`, key, strategyList))
		}
	}
	if c := v.get("cwd"); !c.unset() {
		p.Cwd, _ = n.str(c, key+".cwd", "", false)
	}
	p.User = n.account(v.get("user"), key+".user", "user", "uid", "run as the daemon's user")
	p.Group = n.account(v.get("group"), key+".group", "group", "gid", "use the user's primary group")
	p.Env = n.env(v.get("env"), key+".env")
	p.Port = n.port(v.get("port"), key+".port")
	p.Health = n.health(v.get("health"), key+".health", proxy)
	p.StopSignal, p.StopSignalName = n.stopSignal(v.get("stopSignal"), key+".stopSignal")
	p.GracefulStop = n.gracefulStop(v.get("gracefulStopMs"), key+".gracefulStopMs", proxy.ForceStopTimeout)
	p.RestartDelay = n.duration(v.get("restartDelayMs"), key+".restartDelayMs", DefaultRestartDelay)
	p.Restart = n.restart(v.get("restart"), key+".restart")
	p.Memory = n.memory(v.get("memory"), key+".memory")
	p.Lifecycle = n.lifecycle(v.get("lifecycle"), key+".lifecycle")
	p.NonBlockingDrain = n.boolean(v.get("nonBlockingDrain"), key+".nonBlockingDrain", false)
	p.Replicas, p.ReplicasAuto = n.replicas(v.get("replicas"), key+".replicas")
	p.OutputLines = n.positiveInt(v.get("outputLines"), key+".outputLines", DefaultOutputLines,
		fmt.Sprintf("Set %s.outputLines to a positive whole number of lines, e.g. outputLines: 200.", key))
	p.Balance = n.balance(v.get("balance"), key+".balance")
	p.Stickiness = n.stickiness(v.get("stickiness"), key+".stickiness")
	p.DependsOn = n.dependsOn(v.get("dependsOn"), key+".dependsOn")
	p.Recycle = n.recycle(v.get("recycle"), key+".recycle")
	return p
}

// account reads processes[i].user or .group: a name or numeric id, as a
// string or a non-negative integer (kept as its decimal string). Names are
// resolved where the instance starts (systemd or the exec runner), so only
// what can never be an account is rejected here: emptiness, whitespace,
// control characters, ":" (the passwd separator) and "/".
func (n *normalizer) account(v *value, key, what, id, unset string) string {
	if v.unset() {
		return ""
	}
	switch v.kind {
	case kindNumber:
		if isInteger(v.num) && v.num >= 0 && v.num <= math.MaxUint32 {
			return strconv.FormatUint(uint64(v.num), 10)
		}
	case kindString:
		if isAccountName(v.str) {
			return v.str
		}
	}
	n.add(fmt.Sprintf("%s must be a non-empty %s name or numeric %s", key, what, id),
		fmt.Sprintf(`Set %s to the %s the process runs as, a name such as %s: "shop" or a numeric %s such as %s: "1001" (no spaces, control characters, ":" or "/"), or remove it to %s.`,
			key, what, leaf(key), id, leaf(key), unset))
	return ""
}

// isAccountName reports whether s could name a user or group.
func isAccountName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == ':' || r == '/' || r == utf8.RuneError {
			return false
		}
	}
	return true
}

// replicas reads a positive integer or "auto" (one per CPU).
func (n *normalizer) replicas(v *value, key string) (int, bool) {
	fix := fmt.Sprintf(`Set %s to a positive whole number of instances, e.g. replicas: 3, or to "auto" for one per CPU.`, key)
	if v.kind == kindString {
		if v.str == "auto" {
			return max(runtime.NumCPU(), 1), true
		}
		n.add(key+` must be a positive integer or "auto"`, fix)
		return 1, false
	}
	return n.positiveInt(v, key, 1, fix), false
}

func (n *normalizer) balance(v *value, key string) Balance {
	if v.unset() {
		return ""
	}
	if v.kind == kindString {
		switch b := Balance(v.str); b {
		case LeastInFlight, RoundRobin:
			return b
		}
	}
	n.add(key+" must be one of: least-in-flight, round-robin",
		fmt.Sprintf(`Set %s to "least-in-flight" (the default: the replica with the fewest open requests) or "round-robin", e.g. balance: "round-robin".`, key))
	return ""
}

func (n *normalizer) stickiness(v *value, key string) *Stickiness {
	if v.unset() {
		return nil
	}
	fix := fmt.Sprintf(`Set %s to {cookie: "NAME"} to pin a client by a cookie the proxy sets, or to {clientIp: true} to hash the client address, e.g. stickiness: {cookie: "rb_replica"}.`, key)
	if !v.isObject() {
		n.add(key+" must be an object", fix)
		return nil
	}
	s := &Stickiness{}
	if c := v.get("cookie"); !c.unset() {
		if c.kind != kindString || !isCookieName(c.str) {
			n.add(key+".cookie must be a cookie name",
				fmt.Sprintf(`Set %s.cookie to a non-empty name of letters, digits and !#$%%&'*+-.^_|~ characters, e.g. cookie: "rb_replica".`, key))
			return nil
		}
		s.Cookie = c.str
	}
	s.ClientIP = n.boolean(v.get("clientIp"), key+".clientIp", false)
	if (s.Cookie == "") == !s.ClientIP {
		n.add(key+" must set exactly one of cookie and clientIp", fix)
		return nil
	}
	return s
}

// isCookieName reports whether s is an RFC 6265 cookie-name (an HTTP token).
func isCookieName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func (n *normalizer) dependsOn(v *value, key string) []string {
	if v.unset() {
		return nil
	}
	if v.kind != kindArray {
		n.add(key+" must be an array", fmt.Sprintf(`Set %s to a list of process ids that must be ready first, e.g. dependsOn: ["beacon"].`, key))
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for i, it := range v.items {
		ik := fmt.Sprintf("%s[%d]", key, i)
		if it.kind != kindString || strings.TrimSpace(it.str) == "" {
			n.add(ik+" must be a non-empty string", fmt.Sprintf(`Set %s to the id of another process, e.g. "beacon".`, ik))
			continue
		}
		if !seen[it.str] {
			seen[it.str] = true
			out = append(out, it.str)
		}
	}
	return out
}

func (n *normalizer) recycle(v *value, key string) *Recycle {
	if v.unset() {
		return nil
	}
	if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf("Set %s to an object such as {everyMs: 86400000, jitterMs: 3600000}, or remove it.", key))
		return nil
	}
	r := &Recycle{}
	everyFix := fmt.Sprintf("Set %s.everyMs to a positive number of milliseconds between replacements, e.g. everyMs: 86400000 (daily).", key)
	f, ok := n.numFix(v.get("everyMs"), key+".everyMs", 0, false, everyFix)
	switch {
	case !ok:
		return nil
	case f <= 0:
		n.add(key+".everyMs must be a positive number", everyFix)
		return nil
	}
	r.Every = msDuration(f)
	r.Jitter = n.nonNegativeDuration(v.get("jitterMs"), key+".jitterMs", 0)
	return r
}

func (n *normalizer) env(v *value, key string) []EnvVar {
	env := []EnvVar{}
	if v.unset() {
		return env
	}
	if !v.isObject() {
		n.add(key+" must be an object", fmt.Sprintf(`Set %s to an object of string values, e.g. env: {NODE_ENV: "production"}.`, key))
		return env
	}
	for _, name := range v.keys {
		vk := key + "." + name
		if name == "" || strings.ContainsAny(name, "=\x00") {
			n.add(fmt.Sprintf("%s has an invalid variable name %q", key, name),
				fmt.Sprintf(`Rename the variable in %s; names must be non-empty and contain no "=" or NUL, e.g. NODE_ENV.`, key))
			continue
		}
		ev := v.get(name)
		fix := fmt.Sprintf(`Set %s to a string, e.g. %s: "production", or pass the daemon's value through with %s: "{{env.%s}}".`, vk, jsKey(name), jsKey(name), name)
		switch {
		case ev.unset():
			n.add(vk+" is required", fix)
		case ev.kind != kindString:
			n.add(vk+" must be a string", fix)
		default:
			env = append(env, EnvVar{Name: name, Value: ev.str})
		}
	}
	return env
}

// port implements spec §2.7 port plus CFG-29 (integers within 0–65535).
func (n *normalizer) port(v *value, key string) *PortRange {
	if v.unset() {
		return nil
	}
	badRange := func() {
		n.add(key+" "+portRangeMessage,
			fmt.Sprintf("Set %s to a port number or an ascending range of non-negative ports, e.g. port: %s (0 means an OS-assigned port).", key, examplePortRange))
	}
	badBounds := func(k string) {
		example := "port: 18000 or port: " + examplePortRange
		switch {
		case strings.HasSuffix(k, ".from"):
			example = "from: 18000"
		case strings.HasSuffix(k, ".to"):
			example = "to: 18099"
		}
		n.add(k+" "+portBoundsMessage, fmt.Sprintf("Set %s to a whole TCP port number from 0 to 65535, e.g. %s.", k, example))
	}
	switch v.kind {
	case kindNumber:
		if v.num < 0 {
			badRange()
			return nil
		}
		if !isPort(v.num) {
			badBounds(key)
			return nil
		}
		return &PortRange{From: int(v.num), To: int(v.num)}
	case kindObject:
		from, okFrom := n.num(v.get("from"), key+".from", 0, true)
		to, okTo := n.num(v.get("to"), key+".to", from, true)
		if !okFrom || !okTo {
			return nil
		}
		if from < 0 || to < 0 || to < from {
			badRange()
			return nil
		}
		inBounds := true
		if !isPort(from) {
			badBounds(key + ".from")
			inBounds = false
		}
		if !isPort(to) {
			badBounds(key + ".to")
			inBounds = false
		}
		if !inBounds {
			return nil
		}
		return &PortRange{From: int(from), To: int(to)}
	}
	badRange()
	return nil
}

func (n *normalizer) health(v *value, key string, proxy Proxy) *Health {
	if v.kind == kindNull || v.kind == kindBool && !v.bool {
		return nil
	}
	src := v
	if v.unset() {
		src = &value{kind: kindObject, fields: map[string]*value{}}
	} else if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf(`Set %s to an object such as {path: "/ping", timeoutMs: 30000}, or to false to disable the health check.`, key))
		return nil
	}
	h := &Health{}
	h.Notify = n.boolean(src.get("notify"), key+".notify", false)
	defPath := proxy.HealthPath
	if h.Notify {
		defPath = "" // READY=1 alone, unless a path asks for an HTTP probe too
	}
	h.Path, _ = n.str(src.get("path"), key+".path", defPath, true)
	h.Timeout = n.duration(src.get("timeoutMs"), key+".timeoutMs", proxy.HealthTimeout)
	h.Interval = n.duration(src.get("intervalMs"), key+".intervalMs", DefaultHealthInterval)
	h.StartDelay = n.nonNegativeDuration(src.get("startDelayMs"), key+".startDelayMs", 0)
	return h
}

func (n *normalizer) stopSignal(v *value, key string) (sig syscall.Signal, name string) {
	if v.unset() {
		return mustSignal(DefaultStopSignal), DefaultStopSignal
	}
	if v.kind == kindString {
		if s, ok := units.ParseSignal(v.str); ok {
			return s, v.str
		}
	}
	n.add(key+" must be a valid signal name", fmt.Sprintf(`Set %s to a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT".`, key))
	return mustSignal(DefaultStopSignal), DefaultStopSignal
}

func (n *normalizer) gracefulStop(v *value, key string, def time.Duration) units.Grace {
	if v.kind == kindString && v.str == "indefinite" {
		return units.Grace{Indefinite: true}
	}
	fix := fmt.Sprintf(`Set %s to a non-negative number of milliseconds, e.g. gracefulStopMs: 30000, or to "indefinite" to never send SIGKILL.`, key)
	f, ok := n.numFix(v, key, ms(def), true, fix)
	if !ok {
		return units.Grace{Timeout: def}
	}
	if f < 0 {
		n.add(key+" must be a non-negative number", fix)
		return units.Grace{Timeout: def}
	}
	return units.Grace{Timeout: msDuration(f)}
}

func (n *normalizer) restart(v *value, key string) Restart {
	r := Restart{BackoffFactor: 1}
	if v.unset() {
		return r
	}
	if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf("Set %s to an object such as {maxRestarts: 5, windowMs: 60000, backoffFactor: 2, maxDelayMs: 30000}, or remove it for unlimited restarts.", key))
		return r
	}
	if mr := v.get("maxRestarts"); !mr.unset() {
		if mr.kind == kindNumber && isInteger(mr.num) && mr.num >= 0 {
			m := int(mr.num)
			r.MaxRestarts = &m
		} else {
			n.add(key+".maxRestarts must be a non-negative integer",
				fmt.Sprintf("Set %s.maxRestarts to a whole number of restarts, e.g. maxRestarts: 5 (0 disables automatic restarts), or remove it for unlimited restarts.", key))
		}
	}
	r.Window = n.nonNegativeDuration(v.get("windowMs"), key+".windowMs", 0)
	backoffFix := fmt.Sprintf("Set %s.backoffFactor to a number of at least 1, e.g. backoffFactor: 2 (1 keeps the delay constant, 2 doubles it after each restart).", key)
	if f, ok := n.numFix(v.get("backoffFactor"), key+".backoffFactor", 1, true, backoffFix); ok {
		if f < 1 {
			n.add(key+".backoffFactor must be a number greater than or equal to 1", backoffFix)
		} else {
			r.BackoffFactor = f
		}
	}
	r.MaxDelay = n.nonNegativeDuration(v.get("maxDelayMs"), key+".maxDelayMs", 0)
	return r
}

func (n *normalizer) memory(v *value, key string) *Memory {
	if v.unset() {
		return nil
	}
	if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf("Set %s to an object such as {limitBytes: 536870912}, or remove it to disable memory supervision.", key))
		return nil
	}
	m := &Memory{CheckInterval: DefaultMemoryInterval}
	limitFix := fmt.Sprintf("Set %s.limitBytes to a positive whole number of bytes, e.g. limitBytes: 536870912 (512 MiB).", key)
	if f, ok := n.numFix(v.get("limitBytes"), key+".limitBytes", 0, true, limitFix); ok {
		if !isInteger(f) || f <= 0 {
			n.add(key+".limitBytes must be a positive integer", limitFix)
		} else {
			m.LimitBytes = uint64(f)
		}
	}
	warnFix := fmt.Sprintf("Set %s.warnBytes to a whole number of bytes below limitBytes, e.g. warnBytes: 402653184 (384 MiB), or 0 for no warning.", key)
	if f, ok := n.numFix(v.get("warnBytes"), key+".warnBytes", 0, true, warnFix); ok {
		if !isInteger(f) || f < 0 {
			n.add(key+".warnBytes must be a non-negative integer", warnFix)
		} else {
			m.WarnBytes = uint64(f)
		}
	}
	maxFix := fmt.Sprintf("Set %s.maxBytes to a whole number of bytes above limitBytes, e.g. maxBytes: 805306368 (768 MiB), or remove it.", key)
	if f, ok := n.numFix(v.get("maxBytes"), key+".maxBytes", 0, true, maxFix); ok {
		switch {
		case !isInteger(f) || f < 0:
			n.add(key+".maxBytes must be a non-negative integer", maxFix)
		case f > 0 && m.LimitBytes > 0 && uint64(f) <= m.LimitBytes:
			// The kernel would kill the process before the graceful
			// memory restart at limitBytes could happen.
			n.add(key+".maxBytes must be greater than "+key+".limitBytes", maxFix)
		default:
			m.MaxBytes = uint64(f)
		}
	}
	intervalFix := fmt.Sprintf("Set %s.checkIntervalMs to a positive number of milliseconds, e.g. checkIntervalMs: 5000.", key)
	if f, ok := n.numFix(v.get("checkIntervalMs"), key+".checkIntervalMs", ms(DefaultMemoryInterval), true, intervalFix); ok {
		if f <= 0 {
			n.add(key+".checkIntervalMs must be a positive number", intervalFix)
		} else {
			m.CheckInterval = msDuration(f)
		}
	}
	return m
}

func (n *normalizer) lifecycle(v *value, key string) Lifecycle {
	var l Lifecycle
	if v.unset() {
		return l
	}
	if !v.isObject() {
		n.add(key+" must be an object",
			fmt.Sprintf(`Set %s to an object such as {quietCommand: "kill -TSTP -$ROLLBRIDGE_PID", drainTimeoutMs: 60000}, or remove it.`, key))
		return l
	}
	l.QuietCommand = n.optionalString(v.get("quietCommand"), key+".quietCommand")
	l.DrainCommand = n.optionalString(v.get("drainCommand"), key+".drainCommand")
	l.DrainTimeout = n.nonNegativeDuration(v.get("drainTimeoutMs"), key+".drainTimeoutMs", 0)
	l.StopCommand = n.optionalString(v.get("stopCommand"), key+".stopCommand")
	if l.DrainCommand != "" && l.DrainTimeout <= 0 {
		n.add(fmt.Sprintf("%s.drainCommand requires a positive %s.drainTimeoutMs", key, key),
			fmt.Sprintf("Set %s.drainTimeoutMs to a positive bound for drainCommand, e.g. drainTimeoutMs: 60000; with 0 the drain step is skipped and the command never runs.", key))
	}
	return l
}

// processSet applies the cross-process rules of spec §2.12 in order.
func (n *normalizer) processSet(ps []Process) {
	seen := map[string]bool{}
	for i := range ps {
		p := &ps[i]
		if p.ID == "" {
			continue
		}
		if seen[p.ID] {
			n.add("Duplicate process id: "+p.ID, fmt.Sprintf("Give each process a unique id; %q is used more than once (rename one, e.g. id: %q).", p.ID, p.ID+"-2"))
		}
		seen[p.ID] = true
		if strings.Contains(p.ID, "#") {
			n.add(fmt.Sprintf("Process id %q must not contain \"#\"", p.ID),
				fmt.Sprintf(`Remove "#" from the process id %q; it is reserved for replica instance ids such as "%s#0".`, p.ID, strings.ReplaceAll(p.ID, "#", "")))
		}
		if (p.Replicas > 1 || p.ReplicasAuto) && p.Policy != Proxied && (p.Policy != Companion || p.Port != nil) {
			what := string(p.Policy)
			if p.Port != nil {
				what += " with a port"
			}
			n.add(fmt.Sprintf("Process %q can only set replicas > 1 on the proxied process or a companion process without a port", p.ID),
				fmt.Sprintf("Remove replicas from %q (it is %s), or make it a port-less companion, e.g. policy: \"companion\" without port.", p.ID, what))
		}
		if p.NonBlockingDrain && p.Policy != Companion {
			n.add(fmt.Sprintf("Process %q can only set nonBlockingDrain on a companion process", p.ID),
				fmt.Sprintf("Remove nonBlockingDrain from %q (it is %s); only companions drain in parallel with the HTTP drain, e.g. {id: \"worker\", policy: \"companion\", nonBlockingDrain: true}.", p.ID, p.Policy))
		}
		if p.DeployStrategy == Handoff {
			switch {
			case p.Policy != Service:
				n.add(fmt.Sprintf("Process %q can only set deployStrategy: \"handoff\" on a service process", p.ID),
					fmt.Sprintf(`Remove deployStrategy from %q (it is %s), or make it a service, e.g. policy: "service", deployStrategy: "handoff".`, p.ID, p.Policy))
			case p.Port == nil:
				n.add(fmt.Sprintf("Handoff service %q must define a port range", p.ID),
					fmt.Sprintf("Give the handoff service %q a port range so each release gets its own port, e.g. port: %s.", p.ID, examplePortRange))
			case p.Port.From == p.Port.To:
				n.add(fmt.Sprintf("Handoff service %q must use a multi-port range", p.ID),
					fmt.Sprintf("Widen the port of %q to a range so old and new instances can overlap, e.g. port: {from: %d, to: %d}.", p.ID, p.Port.From, min(p.Port.From+99, maxPort)))
			}
		}
		if p.Lifecycle.StopCommand != "" && p.StopSignalName != DefaultStopSignal {
			n.add(fmt.Sprintf("Process %q sets both lifecycle.stopCommand and a custom stopSignal, but stopCommand replaces stopSignal", p.ID),
				fmt.Sprintf("Remove stopSignal (%s) from %q, or send that signal from the stop command, e.g. stopCommand: \"kill -%s -$ROLLBRIDGE_PID\".", p.StopSignalName, p.ID, strings.TrimPrefix(p.StopSignalName, "SIG")))
		}
		if p.Policy != Proxied && p.Balance != "" {
			n.add(fmt.Sprintf("Process %q can only set balance on the proxied process", p.ID),
				fmt.Sprintf(`Remove balance from %q (it is %s); it chooses among the proxied process's replicas, e.g. {id: "web", policy: "proxied", replicas: 4, balance: "round-robin"}.`, p.ID, p.Policy))
		}
		if p.Policy != Proxied && p.Stickiness != nil {
			n.add(fmt.Sprintf("Process %q can only set stickiness on the proxied process", p.ID),
				fmt.Sprintf(`Remove stickiness from %q (it is %s); it pins clients to a replica of the proxied process, e.g. {id: "web", policy: "proxied", replicas: 4, stickiness: {cookie: "rb_replica"}}.`, p.ID, p.Policy))
		}
		if p.Policy == Proxied && p.Replicas > 1 && p.Port != nil && p.Port.From != 0 && p.Port.To-p.Port.From+1 < p.Replicas {
			n.add(fmt.Sprintf("Proxied process %q needs a port range of at least %d ports for replicas: %d", p.ID, p.Replicas, p.Replicas),
				fmt.Sprintf("Widen the port range of %q so every replica gets its own port, with room for the next release and replacements, e.g. port: {from: %d, to: %d}.", p.ID, p.Port.From, min(p.Port.From+max(99, 4*p.Replicas), maxPort)))
		}
	}

	proxied := 0
	for i := range ps {
		if ps[i].Policy == Proxied {
			proxied++
		}
	}
	if proxied != 1 {
		n.add(fmt.Sprintf("Config must define exactly one proxied process; found %d", proxied),
			`Mark exactly one process with policy: proxied so Rollbridge knows where to forward traffic, e.g. {id: "web", policy: "proxied", command: "node server.js --port {{port}}", port: {from: 18000, to: 18099}}.`)
	}
	for i := range ps {
		p := &ps[i]
		if p.Policy != Proxied || p.Port != nil {
			continue
		}
		id := p.ID
		if id == "" {
			id = "(unnamed)"
		}
		n.add(fmt.Sprintf("Proxied process %s must define a port range", id),
			fmt.Sprintf("Add a port range to the proxied process %q, e.g. port: %s.", id, examplePortRange))
	}
	n.dependencies(ps)
}

// dependencies checks dependsOn: known ids, no self-dependency, only on
// processes that start in the same or an earlier deploy phase, no cycles.
func (n *normalizer) dependencies(ps []Process) {
	byID := map[string]*Process{}
	for i := range ps {
		if ps[i].ID != "" {
			if _, dup := byID[ps[i].ID]; !dup {
				byID[ps[i].ID] = &ps[i]
			}
		}
	}
	edges := map[string][]string{}
	for i := range ps {
		p := &ps[i]
		if p.ID == "" {
			continue
		}
		for _, dep := range p.DependsOn {
			d := byID[dep]
			switch {
			case dep == p.ID:
				n.add(fmt.Sprintf("Process %q cannot depend on itself", p.ID),
					fmt.Sprintf(`Remove %q from the dependsOn list of %q, e.g. dependsOn: [].`, dep, p.ID))
			case d == nil:
				n.add(fmt.Sprintf("Process %q depends on unknown process %q", p.ID, dep),
					fmt.Sprintf(`Use the id of a process defined in processes, or remove it from dependsOn, e.g. dependsOn: [%q].`, firstOtherID(ps, p.ID)))
			case d.Phase() > p.Phase():
				n.add(fmt.Sprintf("Process %q (%s) cannot depend on %q (%s), which starts later in a deploy", p.ID, p.kindName(), dep, d.kindName()),
					fmt.Sprintf("Remove %q from the dependsOn list of %q: persistent services start first, then the release's handoff services, companions and proxied process, then singletons after the traffic switch; e.g. a companion may use dependsOn: [\"beacon\"] for a persistent service beacon.", dep, p.ID))
			default:
				if d.Phase() == p.Phase() {
					edges[p.ID] = append(edges[p.ID], dep)
				}
			}
		}
	}
	if cycle := findCycle(ps, edges); cycle != nil {
		n.add("Processes depend on each other in a cycle: "+strings.Join(cycle, " → "),
			fmt.Sprintf("Remove one dependsOn entry of the cycle so the processes can start in order, e.g. drop %q from the dependsOn list of %q.", cycle[1], cycle[0]))
	}
}

// kindName describes the process's policy for messages.
func (p *Process) kindName() string {
	switch {
	case p.Policy == Service && p.DeployStrategy == Handoff:
		return "handoff service"
	case p.Policy == Service:
		return "persistent service"
	}
	return string(p.Policy)
}

func firstOtherID(ps []Process, not string) string {
	for i := range ps {
		if ps[i].ID != "" && ps[i].ID != not {
			return ps[i].ID
		}
	}
	return "beacon"
}

// findCycle returns the first dependency cycle (first id repeated at the
// end), searching in config order, or nil.
func findCycle(ps []Process, edges map[string][]string) []string {
	const (
		unvisited = iota
		onPath
		done
	)
	state := map[string]int{}
	var path []string
	var visit func(id string) []string
	visit = func(id string) []string {
		state[id] = onPath
		path = append(path, id)
		for _, dep := range edges[id] {
			switch state[dep] {
			case onPath:
				for i, p := range path {
					if p == dep {
						return append(append([]string(nil), path[i:]...), dep)
					}
				}
			case unvisited:
				if c := visit(dep); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		state[id] = done
		return nil
	}
	for i := range ps {
		if id := ps[i].ID; id != "" && state[id] == unvisited {
			if c := visit(id); c != nil {
				return c
			}
		}
	}
	return nil
}

// --- generic field helpers -------------------------------------------------

// str reads a string. Unset: def when hasDef, else "<key> is required".
// ok is false when an issue was added or the value was unset without a
// default.
func (n *normalizer) str(v *value, key, def string, hasDef bool) (string, bool) {
	fix := fmt.Sprintf("Set %s to a string, e.g. %s: %s.", key, leaf(key), exampleFor(key))
	if v.unset() {
		if hasDef {
			return def, true
		}
		n.add(key+" is required", fix)
		return "", false
	}
	if v.kind != kindString {
		n.add(key+" must be a string", fix)
		return def, false
	}
	return v.str, true
}

// optionalString reads an optional string; unset → "".
func (n *normalizer) optionalString(v *value, key string) string {
	if v.unset() {
		return ""
	}
	s, _ := n.str(v, key, "", false)
	return s
}

// num reads a finite number with the generic messages.
func (n *normalizer) num(v *value, key string, def float64, hasDef bool) (float64, bool) {
	return n.numFix(v, key, def, hasDef, fmt.Sprintf("Set %s to a finite number, e.g. %s: %s.", key, leaf(key), exampleFor(key)))
}

func (n *normalizer) numFix(v *value, key string, def float64, hasDef bool, fix string) (float64, bool) {
	if v.unset() {
		if hasDef {
			return def, true
		}
		n.add(key+" is required", fix)
		return 0, false
	}
	if v.kind != kindNumber {
		n.add(key+" must be a number", fix)
		return def, false
	}
	return v.num, true
}

// duration reads a number of milliseconds without range checks.
func (n *normalizer) duration(v *value, key string, def time.Duration) time.Duration {
	f, ok := n.num(v, key, ms(def), true)
	if !ok {
		return def
	}
	return msDuration(f)
}

// nonNegativeDuration reads a number of milliseconds ≥ 0.
func (n *normalizer) nonNegativeDuration(v *value, key string, def time.Duration) time.Duration {
	fix := fmt.Sprintf("Set %s to a non-negative number of milliseconds, e.g. %s: %s.", key, leaf(key), exampleFor(key))
	f, ok := n.numFix(v, key, ms(def), true, fix)
	if !ok {
		return def
	}
	if f < 0 {
		n.add(key+" must be a non-negative number", fix)
		return def
	}
	return msDuration(f)
}

func (n *normalizer) positiveInt(v *value, key string, def int, fix string) int {
	f, ok := n.numFix(v, key, float64(def), true, fix)
	if !ok {
		return def
	}
	if !isInteger(f) || f < 1 {
		n.add(key+" must be a positive integer", fix)
		return def
	}
	return int(f)
}

func (n *normalizer) boolean(v *value, key string, def bool) bool {
	if v.unset() {
		return def
	}
	if v.kind != kindBool {
		n.add(key+" must be a boolean", fmt.Sprintf("Set %s to true or false, e.g. %s: true.", key, leaf(key)))
		return def
	}
	return v.bool
}

// object reads an object. Unset: an empty object when optional, else
// "<key> is required".
func (n *normalizer) object(v *value, key string, optional bool) *value {
	empty := &value{kind: kindObject, fields: map[string]*value{}}
	if v.unset() {
		if !optional {
			n.add(key+" is required", fmt.Sprintf("Add a %s object to the config, e.g. %s: %s.", key, key, exampleFor(key)))
		}
		return empty
	}
	if !v.isObject() {
		n.add(key+" must be an object", fmt.Sprintf("Set %s to an object, e.g. %s: %s.", key, key, exampleFor(key)))
		return empty
	}
	return v
}

// --- number helpers --------------------------------------------------------

// isInteger is JavaScript's Number.isSafeInteger: whole and exactly
// representable, so conversions to Go integers are exact.
func isInteger(f float64) bool {
	return f == math.Trunc(f) && math.Abs(f) <= maxSafeInteger
}

func isPort(f float64) bool { return isInteger(f) && f >= 0 && f <= maxPort }

// msDuration converts milliseconds to a Duration, saturating instead of
// overflowing.
func msDuration(ms float64) time.Duration {
	d := ms * float64(time.Millisecond)
	switch {
	case d >= math.MaxInt64:
		return math.MaxInt64
	case d <= math.MinInt64:
		return math.MinInt64
	}
	return time.Duration(d)
}

func mustSignal(name string) syscall.Signal {
	s, ok := units.ParseSignal(name)
	if !ok {
		panic("config: unknown built-in signal " + name)
	}
	return s
}

// --- fix examples ------------------------------------------------------------

// leaf is the last segment of a dotted key ("processes[0].health.path" → "path").
func leaf(key string) string {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		key = key[i+1:]
	}
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	return key
}

// jsKey quotes an object key when it is not a plain identifier.
func jsKey(name string) string {
	for i, r := range name {
		if !(r == '_' || r == '$' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return strconv.Quote(name)
		}
	}
	if name == "" {
		return `""`
	}
	return name
}

// genericKey replaces array indexes by "[]" ("processes[2].port" → "processes[].port").
func genericKey(key string) string {
	var b strings.Builder
	skipping := false
	for _, r := range key {
		switch {
		case r == '[':
			skipping = true
			b.WriteString("[]")
		case r == ']':
			skipping = false
		case !skipping:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// examples gives an example value (as written in rollbridge.js) per key.
var examples = map[string]string{
	"application":                          `"shop"`,
	"control":                              `{path: "/run/rollbridge/shop.sock"}`,
	"control.path":                         `"/run/rollbridge/shop.sock"`,
	"proxy":                                `{host: "127.0.0.1", port: 8182}`,
	"proxy.host":                           `"127.0.0.1"`,
	"proxy.port":                           `8182`,
	"proxy.upstreamHost":                   `"127.0.0.1"`,
	"proxy.healthPath":                     `"/ping"`,
	"proxy.healthTimeoutMs":                `30000`,
	"proxy.drainTimeoutMs":                 `60000`,
	"proxy.forceStopTimeoutMs":             `10000`,
	"proxy.connectTimeoutMs":               `5000`,
	"proxy.responseHeaderTimeoutMs":        `120000`,
	"proxy.drainOnShutdown":                `true`,
	"processes":                            `[{id: "web", policy: "proxied", command: "node server.js --port {{port}}", port: {from: 18000, to: 18099}}]`,
	"releaseRetention":                     `{keep: 10, maxAgeMs: 604800000}`,
	"releaseRetention.keep":                `10`,
	"releaseRetention.maxAgeMs":            `604800000`,
	"statePath":                            `"/var/lib/rollbridge/shop.state.json"`,
	"legacyTakeover.forceStopTimeoutMs":    `10000`,
	"legacyTakeover.processes[].name":      `"legacy web"`,
	"processes[].id":                       `"web"`,
	"processes[].command":                  `"node server.js --port {{port}}"`,
	"processes[].policy":                   `"companion"`,
	"processes[].deployStrategy":           `"persistent"`,
	"processes[].cwd":                      `"{{releasePath}}/backend"`,
	"processes[].port.from":                `18000`,
	"processes[].port.to":                  `18099`,
	"processes[].health.path":              `"/ping"`,
	"processes[].health.timeoutMs":         `30000`,
	"processes[].health.intervalMs":        `250`,
	"processes[].health.startDelayMs":      `2000`,
	"processes[].restartDelayMs":           `1000`,
	"processes[].restart.windowMs":         `60000`,
	"processes[].restart.maxDelayMs":       `30000`,
	"processes[].lifecycle.quietCommand":   `"kill -TSTP -$ROLLBRIDGE_PID"`,
	"processes[].lifecycle.drainCommand":   `"bin/worker-ctl wait-idle"`,
	"processes[].lifecycle.stopCommand":    `"kill -INT -$ROLLBRIDGE_PID"`,
	"processes[].lifecycle.drainTimeoutMs": `60000`,
	"processes[].stickiness.clientIp":      `true`,
	"processes[].recycle.jitterMs":         `3600000`,
	"processes[].health.notify":            `true`,
}

func exampleFor(key string) string {
	if ex, ok := examples[genericKey(key)]; ok {
		return ex
	}
	return `"…"`
}
