package units

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Unit naming scheme (documented in docs/runtime.md):
//
//	rollbridge-<app>-<release>-<instance>.service
//
// where every component is escaped with EscapeComponent, so a literal "-"
// becomes \x2d and the three "-" separators stay unambiguous, and the
// instance is the user-visible id ("web", "worker#0" → worker\x230),
// followed by "#g<n>" for generation n > 0 of a replica slot ("web#2#g1",
// "web#g1"; "#" never occurs in a process id). All units of an application
// live in the slice rollbridge-<app>.slice, which systemd nests under
// rollbridge.slice.
const (
	unitPrefix = "rollbridge"
	// Environment variables carried by every instance; List rebuilds the
	// Identity from them. The first five are the spec's injected variables.
	EnvApplication  = "ROLLBRIDGE_APPLICATION"
	EnvReleaseID    = "ROLLBRIDGE_RELEASE_ID"
	EnvProcessID    = "ROLLBRIDGE_PROCESS_ID"
	EnvReplicaIndex = "ROLLBRIDGE_REPLICA_INDEX"
	EnvReplicaCount = "ROLLBRIDGE_REPLICA_COUNT"
	// EnvInstanceID is the instance id ("worker#0"), added by the runtime.
	EnvInstanceID = "ROLLBRIDGE_INSTANCE_ID"
	// EnvInstanceGeneration is Identity.Generation ("0" for the first
	// incarnation of a replica slot).
	EnvInstanceGeneration = "ROLLBRIDGE_INSTANCE_GENERATION"
)

// InstanceID is the user-visible instance id: the process id, or
// "<id>#<replica>" when the process has more than one replica.
func (id Identity) InstanceID() string {
	if id.Replicas > 1 {
		return id.Process + "#" + strconv.Itoa(id.Replica)
	}
	return id.Process
}

// UnitInstance is the instance component of the unit name: the instance id,
// plus "#g<n>" for a generation n > 0.
func (id Identity) UnitInstance() string {
	if id.Generation > 0 {
		return id.InstanceID() + "#g" + strconv.Itoa(id.Generation)
	}
	return id.InstanceID()
}

// UnitName returns the systemd unit name of the instance.
func (id Identity) UnitName() string {
	return strings.Join([]string{
		unitPrefix,
		EscapeComponent(id.App),
		EscapeComponent(id.Release),
		EscapeComponent(id.UnitInstance()),
	}, "-") + ".service"
}

// Slice returns the slice all units of the application run in.
func (id Identity) Slice() string { return AppSlice(id.App) }

// AppSlice returns rollbridge-<app>.slice.
func AppSlice(app string) string {
	return unitPrefix + "-" + EscapeComponent(app) + ".slice"
}

// AppUnitPattern is a glob matching every instance unit of app (for
// ListUnitsByPatterns). systemd matches with fnmatch(FNM_NOESCAPE), so the
// \xNN escapes are literal, and EscapeComponent has already turned the
// metacharacters "*", "?" and "[" into escapes.
func AppUnitPattern(app string) string {
	return unitPrefix + "-" + EscapeComponent(app) + "-*.service"
}

// SyslogIdentifier is the journald identifier of the instance; unique per
// instance so `journalctl -t` selects exactly its lines.
func (id Identity) SyslogIdentifier() string {
	return strings.TrimSuffix(id.UnitName(), ".service")
}

// IdentityEnv returns the identity variables every instance carries.
func (id Identity) IdentityEnv() []string {
	return []string{
		EnvApplication + "=" + id.App,
		EnvReleaseID + "=" + id.Release,
		EnvProcessID + "=" + id.Process,
		EnvReplicaIndex + "=" + strconv.Itoa(id.Replica),
		EnvReplicaCount + "=" + strconv.Itoa(max(id.Replicas, 1)),
		EnvInstanceID + "=" + id.InstanceID(),
		EnvInstanceGeneration + "=" + strconv.Itoa(id.Generation),
	}
}

// WithIdentityEnv returns env with the identity variables appended for any
// of them not already present (user-set values win, spec §2.14).
func WithIdentityEnv(env []string, id Identity) []string {
	have := make(map[string]bool, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		have[k] = true
	}
	out := append([]string(nil), env...)
	for _, kv := range id.IdentityEnv() {
		k, _, _ := strings.Cut(kv, "=")
		if !have[k] {
			out = append(out, kv)
		}
	}
	return out
}

// IdentityFromEnv rebuilds an Identity from an instance's environment.
// ok is false when the environment does not carry an application and process.
func IdentityFromEnv(env []string) (id Identity, ok bool) {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	id.App, id.Release, id.Process = m[EnvApplication], m[EnvReleaseID], m[EnvProcessID]
	id.Replica, _ = strconv.Atoi(m[EnvReplicaIndex])
	id.Replicas, _ = strconv.Atoi(m[EnvReplicaCount])
	if id.Replicas < 1 {
		id.Replicas = 1
	}
	if g, err := strconv.Atoi(m[EnvInstanceGeneration]); err == nil && g > 0 {
		id.Generation = g
	}
	return id, id.App != "" && id.Process != ""
}

// ParseUnitName reverses UnitName. It returns the application, release and
// instance id (without a generation suffix), or ok=false when name is not a
// Rollbridge instance unit.
func ParseUnitName(name string) (app, release, instance string, ok bool) {
	app, release, instance, _, ok = ParseUnitNameGeneration(name)
	return app, release, instance, ok
}

// ParseUnitNameGeneration is ParseUnitName that also returns the generation
// ("web#2#g1" → instance "web#2", generation 1).
func ParseUnitNameGeneration(name string) (app, release, instance string, generation int, ok bool) {
	base, found := strings.CutSuffix(name, ".service")
	if !found {
		return "", "", "", 0, false
	}
	parts := strings.Split(base, "-")
	if len(parts) != 4 || parts[0] != unitPrefix {
		return "", "", "", 0, false
	}
	var err error
	if app, err = UnescapeComponent(parts[1]); err != nil {
		return "", "", "", 0, false
	}
	if release, err = UnescapeComponent(parts[2]); err != nil {
		return "", "", "", 0, false
	}
	if instance, err = UnescapeComponent(parts[3]); err != nil {
		return "", "", "", 0, false
	}
	if i := strings.LastIndex(instance, "#g"); i > 0 {
		g, err := strconv.Atoi(instance[i+2:])
		if err != nil || g < 1 || strconv.Itoa(g) != instance[i+2:] {
			return "", "", "", 0, false
		}
		instance, generation = instance[:i], g
	}
	return app, release, instance, generation, true
}

// EscapeComponent escapes s for use as one "-"-separated component of a unit
// name, following systemd-escape(1): ASCII letters, digits, ":", "_" and "."
// (not leading) are kept, every other byte becomes \xNN. Empty input yields
// "", so callers must not pass empty identifiers (config rejects them).
func EscapeComponent(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnitSafe(c) && (c != '.' || i > 0) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, `\x%02x`, c)
	}
	return b.String()
}

var escapeSeq = regexp.MustCompile(`\\x[0-9a-fA-F]{2}`)

// UnescapeComponent reverses EscapeComponent.
func UnescapeComponent(s string) (string, error) {
	if strings.Count(s, `\`) != len(escapeSeq.FindAllStringIndex(s, -1)) {
		return "", fmt.Errorf("invalid escape in unit name component %q", s)
	}
	return escapeSeq.ReplaceAllStringFunc(s, func(m string) string {
		v, _ := strconv.ParseUint(m[2:], 16, 8)
		return string([]byte{byte(v)})
	}), nil
}

func isUnitSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == ':' || c == '_' || c == '.'
}

// signalNames maps the signals a config may name (spec: "a signal name
// known to the platform").
var signalNames = map[string]syscall.Signal{
	"SIGABRT": syscall.SIGABRT, "SIGALRM": syscall.SIGALRM, "SIGBUS": syscall.SIGBUS,
	"SIGCHLD": syscall.SIGCHLD, "SIGCONT": syscall.SIGCONT, "SIGFPE": syscall.SIGFPE,
	"SIGHUP": syscall.SIGHUP, "SIGILL": syscall.SIGILL, "SIGINT": syscall.SIGINT,
	"SIGIO": syscall.SIGIO, "SIGIOT": syscall.SIGIOT, "SIGKILL": syscall.SIGKILL,
	"SIGPIPE": syscall.SIGPIPE, "SIGPOLL": syscall.SIGIO, "SIGPROF": syscall.SIGPROF,
	"SIGPWR": syscall.SIGPWR, "SIGQUIT": syscall.SIGQUIT, "SIGSEGV": syscall.SIGSEGV,
	"SIGSTKFLT": syscall.SIGSTKFLT, "SIGSTOP": syscall.SIGSTOP, "SIGSYS": syscall.SIGSYS,
	"SIGTERM": syscall.SIGTERM, "SIGTRAP": syscall.SIGTRAP, "SIGTSTP": syscall.SIGTSTP,
	"SIGTTIN": syscall.SIGTTIN, "SIGTTOU": syscall.SIGTTOU, "SIGURG": syscall.SIGURG,
	"SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2, "SIGVTALRM": syscall.SIGVTALRM,
	"SIGWINCH": syscall.SIGWINCH, "SIGXCPU": syscall.SIGXCPU, "SIGXFSZ": syscall.SIGXFSZ,
}

// ParseSignal maps a name such as "SIGTERM" to its number.
func ParseSignal(name string) (syscall.Signal, bool) {
	s, ok := signalNames[name]
	return s, ok
}

// SignalName maps a signal number to its canonical name ("SIG" + upper case),
// or "SIG<n>" for numbers without a name.
func SignalName(sig syscall.Signal) string {
	best := ""
	for name, s := range signalNames {
		// Prefer the canonical name where two names share a number
		// (SIGIOT/SIGABRT, SIGPOLL/SIGIO).
		if s == sig && (best == "" || name == "SIGABRT" || name == "SIGIO") {
			best = name
		}
	}
	if best == "" {
		return "SIG" + strconv.Itoa(int(sig))
	}
	return best
}

// SignalNames returns every known signal name, sorted.
func SignalNames() []string {
	names := make([]string, 0, len(signalNames))
	for n := range signalNames {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
