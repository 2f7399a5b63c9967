package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// journalTimeout bounds the journalctl readability probe.
const journalTimeout = 10 * time.Second

// maxListed bounds how many unit names a detail spells out.
const maxListed = 10

// manager is what doctor learned about the systemd manager the daemon
// would use.
type manager struct {
	// kind is the requested runner (auto, systemd, exec); kindErr is set
	// when the request names no runner (it is then treated as auto).
	kind    string
	kindErr error
	// conn is nil when no manager answered (err says why) or when the exec
	// runner is forced (then nobody asked).
	conn    *dbusctl.Conn
	own     bool
	err     error
	state   string
	version int
	// runner is what the daemon would run processes with: RunnerSystemd,
	// RunnerExec, or "" when the systemd runner is forced and would fail.
	runner string
	// units are the application's running instance units; listErr is set
	// when they could not be listed.
	units   []liveUnit
	listErr error
}

// liveUnit is one running instance unit of the application.
type liveUnit struct {
	name  string
	state dbusctl.UnitState
	// adoptable: the next daemon re-adopts the unit (its identity matches
	// its name and a process of the config, as in release.Manager.Adopt);
	// otherwise why says what is wrong.
	adoptable bool
	why       string
}

func (m *manager) close() {
	if m.own && m.conn != nil {
		m.conn.Close()
	}
}

// systemd reports whether the daemon would (try to) use the systemd runner.
func (m *manager) systemd() bool { return m.runner == RunnerSystemd || m.kind == RunnerSystemd }

// checkSystemd runs the Go version's checks after the spec's.
func (d *doctor) checkSystemd(ctx context.Context, m *manager) {
	d.checkManager(m)
	d.checkTransientUnits(ctx, m)
	d.checkJournald(ctx, m)
	d.checkSocketActivation()
	d.checkLeftoverUnits(m)
	d.checkSlice(ctx, m)
	d.checkMemoryAccounting(m)
}

// findManager applies the daemon's runner rule (daemon.NewRunner): exec
// when forced; otherwise systemd when a manager answers within
// ManagerProbeTimeout, else exec under auto and a failure when systemd is
// forced.
func (d *doctor) findManager(ctx context.Context) *manager {
	m := &manager{kind: d.opts.Runner}
	switch m.kind {
	case "":
		m.kind = RunnerAuto
	case RunnerAuto, RunnerSystemd, RunnerExec:
	default:
		m.kindErr = fmt.Errorf("unknown runner %q: use auto, systemd or exec", m.kind)
		m.kind = RunnerAuto
	}
	if m.kind == RunnerExec {
		m.runner = RunnerExec
		return m
	}
	// One bound for dial and first calls, as daemon.NewRunner has.
	pctx, cancel := context.WithTimeout(ctx, ManagerProbeTimeout)
	defer cancel()
	m.conn = d.opts.Manager
	if m.conn == nil {
		opts := d.opts.Dial
		if opts.ConnectTimeout == 0 {
			opts.ConnectTimeout = ManagerProbeTimeout
		}
		m.conn, m.err = dbusctl.Dial(pctx, opts)
		m.own = m.err == nil
	}
	if m.conn != nil {
		// A bus without a manager fails on the first call, not on dial.
		if m.state, m.err = m.conn.SystemState(pctx); m.err == nil {
			m.version, m.err = m.conn.Version(pctx)
		}
		if m.err != nil {
			m.close()
			m.conn = nil
		}
	}
	switch {
	case m.conn != nil:
		m.runner = RunnerSystemd
	case m.kind == RunnerAuto:
		m.runner = RunnerExec
	}
	return m
}

func (d *doctor) checkManager(m *manager) {
	switch {
	case m.kindErr != nil:
		d.add(CheckSystemdManager, false, m.kindErr.Error())
	case m.kind == RunnerExec:
		d.add(CheckSystemdManager, true, "not used: the exec runner is selected; processes run as plain child processes")
	case m.conn != nil:
		d.add(CheckSystemdManager, true, fmt.Sprintf("%s at %s answers (systemd %d, %s); the daemon would run processes as transient units",
			managerName(m.conn), m.conn.Address(), m.version, m.state))
	case m.kind == RunnerSystemd:
		d.add(CheckSystemdManager, false, fmt.Sprintf("no systemd manager answers (%v); the systemd runner would fail — run under a systemd manager or select the exec runner", m.err))
	default:
		d.add(CheckSystemdManager, true, fmt.Sprintf("no systemd manager answers (%v); the daemon would fall back to the exec runner", m.err))
	}
}

func managerName(c *dbusctl.Conn) string {
	who := "system manager"
	if c.UserManager() {
		who = "user manager"
	}
	return fmt.Sprintf("%s (%s bus)", who, c.Bus())
}

// checkTransientUnits: a user manager starts transient units for its own
// user; the system manager for root, and for anyone else only when polkit
// grants the action, which is asked for without interaction.
func (d *doctor) checkTransientUnits(ctx context.Context, m *manager) {
	switch {
	case m.conn == nil && m.systemd():
		d.add(CheckTransientUnits, true, "not checked: no systemd manager answers")
	case m.conn == nil:
		d.add(CheckTransientUnits, true, "not used: the exec runner starts processes itself")
	default:
		authorize := d.opts.authorize
		if authorize == nil {
			authorize = askPolkit
		}
		ok, detail := transientPermission(ctx, m.conn.UserManager(), os.Geteuid(), m.conn.Address(), authorize)
		if ok && m.conn.UserManager() {
			detail += lingerNote()
		}
		d.add(CheckTransientUnits, ok, detail)
	}
}

// lingerNote warns when logind is in use and the user does not linger: the
// user manager, and every unit in it, stops with the user's last session.
func lingerNote() string {
	const dir = "/var/lib/systemd/linger"
	if os.Geteuid() == 0 {
		return ""
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return ""
	}
	u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
	if err != nil {
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, u.Username)); err == nil {
		return ""
	}
	return fmt.Sprintf(" (lingering is off: the user manager and its units stop when %s's last session ends; run loginctl enable-linger %s)", u.Username, u.Username)
}

// checkJournald: the systemd runner reads instance output back with
// journalctl, so it must find and be allowed to open the journal. -q is not
// passed: it would hide exactly the permission notices looked for.
func (d *doctor) checkJournald(ctx context.Context, m *manager) {
	if !m.systemd() {
		d.add(CheckJournald, true, "not used: the exec runner keeps process output in memory")
		return
	}
	prog := d.opts.Journalctl
	if prog == "" {
		prog = "journalctl"
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		d.add(CheckJournald, false, fmt.Sprintf("%s not found (%v); instance output cannot be read back — install journalctl (package systemd)", prog, err))
		return
	}
	args := []string{"--no-pager", "-n", "0"}
	where := "the default journal"
	if d.opts.JournalDir != "" {
		args = append(args, "--directory", d.opts.JournalDir)
		where = "the journal in " + d.opts.JournalDir
	}
	jctx, cancel := context.WithTimeout(ctx, journalTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(jctx, path, args...)
	cmd.Stderr = &stderr
	err = cmd.Run()
	msg := firstLine(stderr.String())
	switch {
	case err != nil:
		if msg == "" {
			msg = err.Error()
		}
		d.add(CheckJournald, false, fmt.Sprintf("journalctl cannot read %s: %s", where, msg))
	case strings.Contains(stderr.String(), "insufficient permissions"):
		d.add(CheckJournald, false, fmt.Sprintf("journalctl cannot open %s as uid %d (%s); add the user to the systemd-journal group", where, os.Geteuid(), msg))
	case strings.Contains(stderr.String(), "No journal files were found"):
		d.add(CheckJournald, false, fmt.Sprintf("no journal files in %s; is systemd-journald running?", where))
	default:
		d.add(CheckJournald, true, fmt.Sprintf("journalctl can read %s", where))
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(line)
}

// checkSocketActivation inspects (never consumes) the LISTEN_* variables
// the daemon would take its proxy socket from (proxy.Listen): the socket
// named "proxy", or a single unnamed one.
func (d *doctor) checkSocketActivation() {
	const fdName = "proxy"
	bind := fmt.Sprintf("%s:%d", d.cfg.Proxy.Host, d.cfg.Proxy.Port)
	fds := d.getenv("LISTEN_FDS")
	if fds == "" {
		d.add(CheckSocketActivation, true, fmt.Sprintf("not socket-activated here (LISTEN_FDS unset): the daemon binds %s itself unless a .socket unit passes it a socket named %q", bind, fdName))
		return
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		d.add(CheckSocketActivation, false, fmt.Sprintf("LISTEN_FDS=%q is not a number of sockets", fds))
		return
	}
	if pid := d.getenv("LISTEN_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		d.add(CheckSocketActivation, true, fmt.Sprintf("LISTEN_FDS=%d is addressed to pid %s, not to this process: ignored; the daemon binds %s itself", n, pid, bind))
		return
	}
	var names []string
	if v := d.getenv("LISTEN_FDNAMES"); v != "" {
		names = strings.Split(v, ":")
	}
	switch {
	case n == 0:
		d.add(CheckSocketActivation, true, fmt.Sprintf("LISTEN_FDS=0: no sockets passed; the daemon binds %s itself", bind))
	case slices.Contains(names, fdName):
		d.add(CheckSocketActivation, true, fmt.Sprintf("%d socket(s) passed; the proxy takes the one named %q (host and port come from the .socket unit)", n, fdName))
	case n == 1 && len(names) == 0:
		d.add(CheckSocketActivation, true, "1 unnamed socket passed; the proxy takes it (host and port come from the .socket unit)")
	default:
		d.add(CheckSocketActivation, false, fmt.Sprintf("%d socket(s) passed (names: %s) but none is named %q; set FileDescriptorName=%s in the .socket unit",
			n, strings.Join(names, ", "), fdName, fdName))
	}
}

func (d *doctor) getenv(key string) string {
	for i := len(d.opts.Env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(d.opts.Env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// listUnits finds the application's running instance units and decides,
// as the daemon's re-adoption does, which of them a daemon started now would
// take over: those whose environment matches the unit name and whose process
// (and replica) the config still defines.
func (m *manager) listUnits(ctx context.Context, cfg *config.Config) {
	if m.conn == nil {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, ManagerProbeTimeout)
	defer cancel()
	list, err := m.conn.ListUnits(lctx, units.AppUnitPattern(cfg.Application))
	if err != nil {
		m.listErr = err
		return
	}
	slices.SortFunc(list, func(a, b dbusctl.UnitInfo) int { return strings.Compare(a.Name, b.Name) })
	for _, u := range list {
		p, err := m.conn.Properties(lctx, u.Name)
		if errors.Is(err, dbusctl.ErrNoSuchUnit) {
			continue // collected meanwhile
		}
		if err != nil {
			m.listErr = err
			return
		}
		if p.MainPID == 0 || (p.ActiveState != "active" && p.ActiveState != "activating" && p.ActiveState != "reloading" && p.ActiveState != "deactivating") {
			continue // failed or exited: the runner resets such a name before reusing it
		}
		lu := liveUnit{name: u.Name, state: p.UnitState}
		id, ok := units.IdentityFromEnv(p.Environment)
		app, release, instance, named := units.ParseUnitName(u.Name)
		def := cfg.Process(id.Process)
		switch {
		case !ok || !named || app != id.App || release != id.Release || instance != id.InstanceID():
			lu.why = "its environment does not match its name"
		case def == nil:
			lu.why = fmt.Sprintf("process %q is not in the config", id.Process)
		case id.Replica >= def.Replicas:
			lu.why = fmt.Sprintf("replica %d of %q exceeds replicas: %d", id.Replica, id.Process, def.Replicas)
		default:
			lu.adoptable = true
		}
		m.units = append(m.units, lu)
	}
}

// adoptedPIDs are the main pids of the units the next daemon re-adopts.
func (m *manager) adoptedPIDs() map[int]bool {
	pids := map[int]bool{}
	for _, u := range m.units {
		if u.adoptable {
			pids[u.state.MainPID] = true
		}
	}
	return pids
}

// checkLeftoverUnits reports the application's running units. A daemon of
// this application owns them; otherwise the next daemon re-adopts those its
// config still defines and leaves the rest running unmanaged.
func (d *doctor) checkLeftoverUnits(m *manager) {
	pattern := units.AppUnitPattern(d.cfg.Application)
	switch {
	case m.conn == nil && m.systemd():
		d.add(CheckLeftoverUnits, true, "not checked: no systemd manager answers")
		return
	case m.conn == nil:
		d.add(CheckLeftoverUnits, true, "not used: the exec runner names no units")
		return
	case m.listErr != nil:
		d.add(CheckLeftoverUnits, false, fmt.Sprintf("could not list %s units: %v", pattern, m.listErr))
		return
	case len(m.units) == 0:
		d.add(CheckLeftoverUnits, true, fmt.Sprintf("no running %s units", pattern))
		return
	case d.sameDaemon():
		// The running daemon may run another config than the file says.
		d.add(CheckLeftoverUnits, true, fmt.Sprintf("%d running unit(s) belong to the running daemon", len(m.units)))
		return
	}
	var adopt, foreign, names []string
	for _, u := range m.units {
		if u.adoptable {
			adopt = append(adopt, u.name)
		} else {
			foreign = append(foreign, fmt.Sprintf("%s (%s)", u.name, u.why))
			names = append(names, "'"+u.name+"'")
		}
	}
	if len(foreign) == 0 {
		d.add(CheckLeftoverUnits, true, fmt.Sprintf("%d running unit(s) of a previous daemon will be re-adopted when the daemon starts: %s", len(adopt), listNames(adopt)))
		return
	}
	user := ""
	if m.conn.UserManager() {
		user = " --user"
	}
	d.add(CheckLeftoverUnits, false, fmt.Sprintf("%d running unit(s) match no process of the config and would be left running unmanaged: %s — stop them with systemctl%s stop %s",
		len(foreign), listNames(foreign), user, strings.Join(names, " ")))
}

func listNames(names []string) string {
	if len(names) <= maxListed {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:maxListed], ", ") + fmt.Sprintf(", … and %d more", len(names)-maxListed)
}

// checkMemoryAccounting says where memory figures (status rssBytes, memory
// limits) come from: the unit's cgroup (MemoryCurrent) or, as the fallback,
// the VmRSS of its processes. It fails only when neither works and a
// process configures memory supervision.
func (d *doctor) checkMemoryAccounting(m *manager) {
	var reason string
	switch {
	case m.conn == nil && m.systemd():
		d.add(CheckMemoryAccounting, true, "not checked: no systemd manager answers")
		return
	case m.conn == nil:
		reason = "exec runner: no cgroup per instance"
	default:
		detail, ok := unitMemory(m)
		switch {
		case ok:
			d.add(CheckMemoryAccounting, true, detail)
			return
		case detail != "":
			reason = detail
		case cgroupV2Memory():
			who := "units"
			if m.conn.UserManager() {
				who = "units of a user manager delegated the memory controller"
			}
			d.add(CheckMemoryAccounting, true, fmt.Sprintf("cgroup v2 memory controller available: %s report MemoryCurrent; VmRSS is the fallback", who))
			return
		default:
			reason = "no cgroup v2 memory controller on this host (hybrid or legacy cgroups): units report no MemoryCurrent"
		}
	}
	if _, err := vmRSS(d.opts.procDir, os.Getpid()); err != nil {
		var ids []string
		for _, p := range d.cfg.Processes {
			if p.Memory != nil {
				ids = append(ids, p.ID)
			}
		}
		if len(ids) > 0 {
			d.add(CheckMemoryAccounting, false, fmt.Sprintf("%s, and VmRSS is unreadable (%v): memory supervision of %s cannot measure anything", reason, err, strings.Join(ids, ", ")))
			return
		}
		d.add(CheckMemoryAccounting, true, fmt.Sprintf("%s, and VmRSS is unreadable (%v); no process configures memory supervision", reason, err))
		return
	}
	d.add(CheckMemoryAccounting, true, reason+"; memory is read from VmRSS of each instance's processes")
}

// unitMemory looks at the MemoryCurrent of a running unit of the
// application: ok when it reports one; otherwise a reason ("" when no unit
// runs).
func unitMemory(m *manager) (string, bool) {
	if len(m.units) == 0 {
		return "", false
	}
	u := m.units[0]
	if u.state.MemoryCurrent == dbusctl.MemoryUnknown {
		return fmt.Sprintf("%s reports no MemoryCurrent (no memory accounting for this manager's units)", u.name), false
	}
	return fmt.Sprintf("units report MemoryCurrent (%s: %d bytes)", u.name, u.state.MemoryCurrent), true
}

// cgroupV2Memory reports whether the unified hierarchy is mounted at
// /sys/fs/cgroup with the memory controller enabled.
func cgroupV2Memory() bool {
	raw, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	return err == nil && slices.Contains(strings.Fields(string(raw)), "memory")
}

// vmRSS reads a process's resident set size from /proc (the runners'
// fallback source).
func vmRSS(procDir string, pid int) (uint64, error) {
	if procDir == "" {
		procDir = "/proc"
	}
	path := filepath.Join(procDir, strconv.Itoa(pid), "status")
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line in " + path)
}
