package e2e

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The event catalogue of spec §9 (checklist EVT-04), checked two ways
// against one table, eventCatalogue:
//
//   - TestEventCatalogueInCode scans every Emit/emit/emitFor call of the
//     daemon and release packages with go/ast and resolves its message (a
//     literal, a constant, or a hook label + suffix) and its data keys. Every
//     event of the table must be emitted somewhere, every call site must
//     emit a catalogued event with exactly the catalogued keys. A renamed
//     or dropped event, a renamed, dropped or added data key (a `command`
//     that would leak secrets, say) fails here, naming the call site. The
//     events docs/logging.md names must exist too.
//   - TestEventCatalogueAtRuntime drives a daemon through a deploy, failed
//     deploy, crashes, memory supervision, lifecycle hooks, a proxy error,
//     rollback, restart and stop, and checks every event it records against
//     the same table (names, data keys, the processId/releaseId prefix of
//     process events), and that the events the scenario must cause occurred.
//     It is what proves the static model (e.g. the prefix added by
//     instance.emitFor) matches what the daemon really sends.

// catEvent is one catalogued event.
type catEvent struct {
	keys     []string // data keys always present (process events: with processId, releaseId)
	optional []string // data keys present only sometimes (spec's `revision?`)
	process  bool     // a process-level event, prefixed with processId and releaseId (spec §9 "…")
	addition bool     // not in spec §9: this version's addition (docs/logging.md, docs/replicas.md, …)
}

func (d catEvent) all() []string { return append(slices.Clone(d.keys), d.optional...) }

// catHookLabels are the lifecycle hooks whose outcomes are events (spec §5.6).
var catHookLabels = []string{"quiet command", "drain command", "stop command"}

// eventCatalogue is spec §9's table with this version's documented changes
// (docs/migration.md: `process started` and `release startup process
// status` carry no `command`; `proxy error` names its release; `proxy
// listening` tells whether the socket came from systemd) and additions.
var eventCatalogue = func() map[string]catEvent {
	c := map[string]catEvent{}
	spec := func(name string, keys ...string) { c[name] = catEvent{keys: keys} }
	proc := func(name string, keys ...string) {
		c[name] = catEvent{keys: append(keys, "processId", "releaseId"), process: true}
	}
	add := func(name string, process bool, keys ...string) {
		if process {
			keys = append(keys, "processId", "releaseId")
		}
		c[name] = catEvent{keys: keys, process: process, addition: true}
	}

	// Spec §9, in its order.
	spec("proxy listening", "host", "port", "socketActivated")
	spec("control socket listening", "path")
	spec("proxy error", "error", "releaseId")
	spec("control connection error", "code", "error")
	spec("command failed", "error")
	c["deploy starting"] = catEvent{keys: []string{"releaseId", "releasePath"}, optional: []string{"revision"}}
	spec("deploy failed", "error", "releaseId")
	spec("release startup failed", "error", "phase", "releaseId")
	// Spec: also `command` (dropped, docs/migration.md).
	spec("release startup process status", "exitCode", "exitSignal", "logs", "phase", "pid", "processId", "releaseId", "state")
	spec("traffic switched", "previousReleaseId", "releaseId")
	spec("rollback starting", "releaseId", "releasePath")
	// Spec: `processId`; emitted through the release logger, so it also
	// names the release.
	proc("process restart requested")
	spec("release stopped", "releaseId")
	spec("release drained", "releaseId")
	spec("release drain failed", "error", "releaseId")
	spec("state persist failed", "error")
	spec("orphaned managed process detected", "pid", "processId", "releaseId")
	spec("orphaned processes from a previous daemon", "count", "hint")
	spec("external owner retired", "attestation", "status")
	spec("bootstrap activation failed", "releaseId", "status")
	proc("process started", "id", "pid", "reason") // spec: also `command` (dropped)
	proc("process exited", "code", "id", "signal")
	proc("restart limit reached", "id", "maxRestarts", "windowMs")
	proc("process restart failed", "error", "id")
	proc("memory limit exceeded", "id", "limitBytes", "rssBytes")
	proc("memory warning", "id", "rssBytes", "warnBytes")
	proc("memory restart failed", "error", "id")
	proc("process stop timed out; sending SIGKILL", "id", "pid")
	for _, h := range catHookLabels {
		proc(h+" failed", "error", "id")
		proc(h+" timed out", "id", "timeoutMs")
		proc(h+" exited non-zero", "code", "id")
		proc(h+" exited on signal", "id", "signal")
	}

	// This version's additions.
	add("proxy request drained", false, "error", "reason", "releaseId")
	add("units adopted", false, "activeReleaseId", "count")
	add("unknown unit left running", false, "hint", "pid", "releaseId", "unit")
	add("daemon reload starting", false, "pid")
	add("daemon reload handed over", false, "pid")
	add("daemon reload failed", false, "error")
	add("metrics listening", false, "address", "inherited")
	add("metrics listen failed", false, "address", "error")
	add("process recycling", true, "id", "reason")
	add("process recycle failed", true, "error", "id")
	add("process replacement requested", true, "id", "status")
	add("process replacement failed", true, "error", "id")
	add("replica health check failed", true, "error", "id")
	add("replica in rotation", true, "id")
	add("replica out of rotation", true, "id")
	add("replica replacement starting", true, "id", "port", "previousPid", "reason")
	add("replica replacement failed", true, "error", "id", "reason")
	add("replica replaced", true, "id", "pid", "previousPid", "previousUnit", "reason", "unit")
	c["stale replica stopped"] = catEvent{keys: []string{"id", "processId", "releaseId", "unit"}, optional: []string{"error"}, process: true, addition: true}
	return c
}()

// catEmitSite is one call that emits an event.
type catEmitSite struct {
	pos      token.Position
	messages []string        // the message, or every message a hook label yields
	keys     map[string]bool // data keys, including ones set conditionally
	prefixed bool            // through instance.emit/emitFor: processId and releaseId added
}

// catPackages are the packages that emit events (through release.Events).
var catPackages = []string{"daemon", "release"}

// catWrappers forward a message and data they were given; their own Emit
// calls are not call sites.
var catWrappers = map[string]bool{"Emit": true, "emit": true, "emitFor": true}

// catPackage is the parsed non-test source of one package directory.
type catPackage struct {
	fset   *token.FileSet
	files  []*ast.File
	consts map[string]string
}

func catParsePackage(t *testing.T, dir string) *catPackage {
	t.Helper()
	p := &catPackage{fset: token.NewFileSet(), consts: map[string]string{}}
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no Go files in %s (%v)", dir, err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(p.fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		p.files = append(p.files, f)
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if bl, ok := vs.Values[i].(*ast.BasicLit); ok && bl.Kind == token.STRING {
							p.consts[n.Name], _ = strconv.Unquote(bl.Value)
						}
					}
				}
			}
		}
	}
	return p
}

// funcs calls fn for every function declaration.
func (p *catPackage) funcs(fn func(fd *ast.FuncDecl)) {
	for _, f := range p.files {
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
				fn(fd)
			}
		}
	}
}

func catParams(fd *ast.FuncDecl) []string {
	var out []string
	for _, f := range fd.Type.Params.List {
		if len(f.Names) == 0 {
			out = append(out, "_")
		}
		for _, n := range f.Names {
			out = append(out, n.Name)
		}
	}
	return out
}

func catCallee(c *ast.CallExpr) string {
	switch f := c.Fun.(type) {
	case *ast.SelectorExpr:
		return f.Sel.Name
	case *ast.Ident:
		return f.Name
	}
	return ""
}

// strings resolves a string expression inside fd to its possible values: a
// literal, a package constant, a concatenation, or a parameter of fd
// (resolved at every call of fd with as many arguments).
func (p *catPackage) strings(e ast.Expr, fd *ast.FuncDecl, depth int) ([]string, error) {
	switch x := e.(type) {
	case *ast.BasicLit:
		if x.Kind == token.STRING {
			s, err := strconv.Unquote(x.Value)
			return []string{s}, err
		}
	case *ast.ParenExpr:
		return p.strings(x.X, fd, depth)
	case *ast.BinaryExpr:
		if x.Op != token.ADD {
			break
		}
		l, err := p.strings(x.X, fd, depth)
		if err != nil {
			return nil, err
		}
		r, err := p.strings(x.Y, fd, depth)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, a := range l {
			for _, b := range r {
				out = append(out, a+b)
			}
		}
		return out, nil
	case *ast.Ident:
		if v, ok := p.consts[x.Name]; ok {
			return []string{v}, nil
		}
		if i := slices.Index(catParams(fd), x.Name); i >= 0 && depth < 4 {
			return p.paramValues(fd, i, depth+1)
		}
	}
	return nil, fmt.Errorf("cannot resolve %s to a string", p.text(e))
}

// paramValues resolves parameter i of fd at each of its call sites.
func (p *catPackage) paramValues(fd *ast.FuncDecl, i, depth int) ([]string, error) {
	n := len(catParams(fd))
	var out []string
	var err error
	p.funcs(func(caller *ast.FuncDecl) {
		ast.Inspect(caller.Body, func(node ast.Node) bool {
			c, ok := node.(*ast.CallExpr)
			if !ok || err != nil || catCallee(c) != fd.Name.Name || len(c.Args) != n {
				return true
			}
			vs, e := p.strings(c.Args[i], caller, depth)
			if e != nil {
				err = fmt.Errorf("%s: %w", p.fset.Position(c.Pos()), e)
				return false
			}
			out = append(out, vs...)
			return true
		})
	})
	if err == nil && len(out) == 0 {
		err = fmt.Errorf("no call of %s passes parameter %d", fd.Name.Name, i)
	}
	slices.Sort(out)
	return slices.Compact(out), err
}

// keys resolves the data argument inside fd: nil, a map literal, or a
// local variable initialised with a map literal (plus every key assigned to
// it with v["key"] = … anywhere in fd).
func (p *catPackage) keys(e ast.Expr, fd *ast.FuncDecl) (map[string]bool, error) {
	out := map[string]bool{}
	literal := func(cl *ast.CompositeLit) error {
		for _, el := range cl.Elts {
			kv, ok := el.(*ast.KeyValueExpr)
			if !ok {
				return fmt.Errorf("data literal element %s has no key", p.text(el))
			}
			ks, err := p.strings(kv.Key, fd, 0)
			if err != nil || len(ks) != 1 {
				return fmt.Errorf("data key %s: %v", p.text(kv.Key), err)
			}
			out[ks[0]] = true
		}
		return nil
	}
	switch x := e.(type) {
	case *ast.CompositeLit:
		return out, literal(x)
	case *ast.Ident:
		if x.Name == "nil" {
			return out, nil
		}
		found := false
		var err error
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			as, ok := n.(*ast.AssignStmt)
			if !ok || err != nil {
				return true
			}
			for i, l := range as.Lhs {
				switch lx := l.(type) {
				case *ast.Ident:
					if lx.Name != x.Name || i >= len(as.Rhs) {
						continue
					}
					cl, ok := as.Rhs[i].(*ast.CompositeLit)
					if !ok {
						err = fmt.Errorf("%s: %s is not assigned a map literal", p.fset.Position(as.Pos()), x.Name)
						return false
					}
					found = true
					if e := literal(cl); e != nil {
						err = e
					}
				case *ast.IndexExpr:
					if id, ok := lx.X.(*ast.Ident); ok && id.Name == x.Name {
						ks, e := p.strings(lx.Index, fd, 0)
						if e != nil || len(ks) != 1 {
							err = fmt.Errorf("%s: data key %s: %v", p.fset.Position(lx.Pos()), p.text(lx.Index), e)
							return false
						}
						out[ks[0]] = true
					}
				}
			}
			return true
		})
		if err == nil && !found {
			err = fmt.Errorf("no map literal assigned to %s", x.Name)
		}
		return out, err
	}
	return nil, fmt.Errorf("cannot resolve data %s", p.text(e))
}

func (p *catPackage) text(n ast.Node) string {
	return fmt.Sprintf("%T at %s", n, p.fset.Position(n.Pos()))
}

// emitSites returns every event emission of the package. fail is called
// for a call it cannot resolve.
func (p *catPackage) emitSites(fail func(pos token.Position, format string, args ...any)) []catEmitSite {
	var out []catEmitSite
	p.funcs(func(fd *ast.FuncDecl) {
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			c, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := c.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			mi := 0
			switch sel.Sel.Name {
			case "Emit", "emit":
			case "emitFor":
				mi = 1
			default:
				return true
			}
			pos := p.fset.Position(c.Pos())
			if len(c.Args) != mi+2 {
				fail(pos, "%s call with %d arguments", sel.Sel.Name, len(c.Args))
				return true
			}
			// A wrapper forwarding its own message parameter.
			if id, ok := c.Args[mi].(*ast.Ident); ok && catWrappers[fd.Name.Name] && slices.Contains(catParams(fd), id.Name) {
				return true
			}
			msgs, err := p.strings(c.Args[mi], fd, 0)
			if err != nil {
				fail(pos, "event message: %v", err)
				return true
			}
			keys, err := p.keys(c.Args[mi+1], fd)
			if err != nil {
				fail(pos, "event data: %v", err)
				return true
			}
			site := catEmitSite{pos: pos, messages: msgs, keys: keys, prefixed: sel.Sel.Name != "Emit"}
			if site.prefixed {
				keys["processId"], keys["releaseId"] = true, true
			}
			out = append(out, site)
			return true
		})
	})
	return out
}

// checkPrefixWrappers checks what emitSites assumes of release's
// instance.emit and instance.emitFor: emitFor sets data["processId"] and
// data["releaseId"] before emitting, and emit goes through emitFor.
func (p *catPackage) checkPrefixWrappers(t *testing.T) {
	t.Helper()
	found := map[string]bool{}
	p.funcs(func(fd *ast.FuncDecl) {
		if fd.Recv == nil {
			return
		}
		switch fd.Name.Name {
		case "emitFor":
			found["emitFor"] = true
			set := map[string]bool{}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if as, ok := n.(*ast.AssignStmt); ok {
					for _, l := range as.Lhs {
						if ix, ok := l.(*ast.IndexExpr); ok {
							if bl, ok := ix.Index.(*ast.BasicLit); ok {
								k, _ := strconv.Unquote(bl.Value)
								set[k] = true
							}
						}
					}
				}
				return true
			})
			if !set["processId"] || !set["releaseId"] {
				t.Errorf("%s: emitFor no longer sets data[\"processId\"] and data[\"releaseId\"] (spec §9 prefix); keys set: %v",
					p.fset.Position(fd.Pos()), set)
			}
		case "emit":
			found["emit"] = true
			calls := false
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok && catCallee(c) == "emitFor" {
					calls = true
				}
				return true
			})
			if !calls {
				t.Errorf("%s: emit no longer goes through emitFor (the processId/releaseId prefix)", p.fset.Position(fd.Pos()))
			}
		}
	})
	if !found["emit"] || !found["emitFor"] {
		t.Errorf("release has no instance.emit/emitFor methods (found %v): update the event scan", found)
	}
}

func catKeySet(keys []string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

func catSortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestEventCatalogueInCode covers EVT-04 statically: every event of the
// catalogue (spec §9 plus this version's additions) is emitted by the
// daemon or release package with exactly its data keys, process events
// through the processId/releaseId prefix, and nothing else is emitted.
// docs/logging.md names only events that exist.
func TestEventCatalogueInCode(t *testing.T) {
	emitted := map[string][]catEmitSite{}
	for _, dir := range catPackages {
		p := catParsePackage(t, filepath.Join("..", dir))
		if dir == "release" {
			p.checkPrefixWrappers(t)
		}
		for _, s := range p.emitSites(func(pos token.Position, format string, args ...any) {
			t.Errorf("%s: %s (keep event messages literal, constant or hook label + suffix, and data a map literal)", pos, fmt.Sprintf(format, args...))
		}) {
			for _, m := range s.messages {
				emitted[m] = append(emitted[m], s)
			}
		}
	}
	if len(emitted) == 0 {
		t.Fatal("no event emission found")
	}
	for name, def := range eventCatalogue {
		sites := emitted[name]
		if len(sites) == 0 {
			what := "spec §9 event"
			if def.addition {
				what = "catalogued addition"
			}
			t.Errorf("%s %q is emitted nowhere (renamed or dropped?)", what, name)
			continue
		}
		want := catKeySet(def.all())
		for _, s := range sites {
			if got := catSortedKeys(s.keys); !slices.Equal(got, catSortedKeys(want)) {
				t.Errorf("%s: %q carries %v, the catalogue says %v", s.pos, name, got, catSortedKeys(want))
			}
			if def.process && !s.prefixed && !(s.keys["processId"] && s.keys["releaseId"]) {
				t.Errorf("%s: process event %q not emitted through the release logger (no processId/releaseId)", s.pos, name)
			}
		}
	}
	for name, sites := range emitted {
		if _, ok := eventCatalogue[name]; !ok {
			t.Errorf("%s: event %q is not in the catalogue (spec §9 or a documented addition): a renamed event, or add it to eventCatalogue", sites[0].pos, name)
		}
	}
	t.Logf("%d events emitted at %d call sites", len(emitted), func() int {
		n := 0
		for _, s := range emitted {
			n += len(s)
		}
		return n
	}())

	// docs/logging.md's table of events names existing events.
	for _, name := range catDocEvents(t) {
		if len(emitted[name]) == 0 {
			t.Errorf("docs/logging.md names event %q, which is not emitted", name)
		}
	}
}

// catDocEvents returns the event names of the first column of the
// events table in docs/logging.md.
func catDocEvents(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "logging.md"))
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile("`([^`]+)`")
	var out []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| event | data |") {
			in = true
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 3 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		// "`quiet command …`, `stop command …` (`timed out`, `failed`)"
		// names every prefix with every suffix.
		var prefixes, names []string
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			if p, ok := strings.CutSuffix(m[1], " …"); ok {
				prefixes = append(prefixes, p)
			} else {
				names = append(names, m[1])
			}
		}
		if len(prefixes) == 0 {
			out = append(out, names...)
		}
		for _, p := range prefixes {
			for _, n := range names {
				out = append(out, p+" "+n)
			}
		}
	}
	if len(out) < 10 {
		t.Fatalf("found only %d events in docs/logging.md's table: %q", len(out), out)
	}
	return out
}

// TestEventCatalogueAtRuntime covers EVT-04 at run time: the events a
// daemon records through a scenario that reaches most of the catalogue
// have catalogued names and exactly the catalogued data keys (optional
// ones aside), process events name their process and release, and the
// events the scenario causes all occur.
func TestEventCatalogueAtRuntime(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		// hooked: every hook misbehaves (exit 3, killed by SIGTERM, runs
		// past its bound) and the process ignores the missing signal, so
		// the stop escalates. crasher exhausts its budget; watched trips
		// the memory warning, hog the memory limit.
		e := newEnvOpts(t, runner, `[
    {id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {path: "/ping", timeoutMs: 1500, intervalMs: 50}},
    {id: "hooked", command: "exec sleep 100000", gracefulStopMs: 400,
     lifecycle: {quietCommand: "exit 3", drainCommand: "kill -TERM $$", drainTimeoutMs: 2000, stopCommand: "exec sleep 30"}},
    {id: "crasher", command: "exit 3", restartDelayMs: 50, restart: {maxRestarts: 1, windowMs: 60000}},
    {id: "watched", command: "exec sleep 100000", gracefulStopMs: 400, memory: {limitBytes: 1073741824, warnBytes: 1, checkIntervalMs: 100}},
    {id: "hog", command: "exec sleep 100000", gracefulStopMs: 400, memory: {limitBytes: 1, checkIntervalMs: 1000}}
  ]`, envOpts{noStart: true})
		e.editConfig("forceStopTimeoutMs: 5000}", "forceStopTimeoutMs: 5000, responseHeaderTimeoutMs: 300}")
		e.startDaemon()

		e.rb("deploy", "--release-path", e.release("v1"), "--release-id", "v1", "--revision", "abc123")
		e.waitFor("crasher's budget and the memory events", 20*time.Second, func() bool {
			evs := e.eventLog()
			return len(indexOf(evs, "restart limit reached", "crasher", "v1")) > 0 &&
				len(indexOf(evs, "memory warning", "watched", "v1")) > 0 &&
				len(indexOf(evs, "memory limit exceeded", "hog", "v1")) > 0
		})
		// The upstream answers after the proxy's 300ms response-head bound.
		if code, body, err := get(e.proxyURL("/slow?ms=1500")); err != nil || code != http.StatusGatewayTimeout {
			t.Errorf("slow request: %d %q %v, want 504", code, body, err)
		}
		e.rb("restart", "--process", "watched")
		if out, err := e.rbErr("rollback", "--release-id", "nope"); err == nil {
			t.Errorf("rollback to an unknown release succeeded:\n%s", out)
		}
		// A release without the app fails its health check.
		broken := filepath.Join(e.dir, "releases", "broken")
		if err := os.MkdirAll(broken, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := e.rbErr("deploy", "--release-path", broken, "--release-id", "broken"); err == nil {
			t.Errorf("broken deploy succeeded:\n%s", out)
		}
		e.deploy("v2")
		e.waitFor("v1 drained", 30*time.Second, func() bool { return len(indexOf(e.eventLog(), "release drained", "", "v1")) > 0 })
		e.rb("rollback", "--release-id", "v1")
		e.rb("stop", "--release-id", "v1")
		e.waitFor("v1 stopped", 30*time.Second, func() bool { return len(indexOf(e.eventLog(), "release stopped", "", "v1")) > 0 })

		evs := e.eventLog()
		seen := map[string]int{}
		for _, ev := range evs {
			seen[ev.Message]++
			def, ok := eventCatalogue[ev.Message]
			if !ok {
				t.Errorf("event %q is not in the catalogue: %v", ev.Message, ev.Data)
				continue
			}
			got := map[string]bool{}
			for k := range ev.Data {
				got[k] = true
			}
			for _, k := range def.keys {
				if !got[k] {
					t.Errorf("event %q lacks %q: %v", ev.Message, k, ev.Data)
				}
			}
			allowed := catKeySet(def.all())
			for k := range got {
				if !allowed[k] {
					t.Errorf("event %q carries %q, not in the catalogue: %v", ev.Message, k, ev.Data)
				}
			}
			if def.process && (ev.str("processId") == "" || ev.str("releaseId") == "") {
				t.Errorf("process event %q does not name its process and release: %v", ev.Message, ev.Data)
			}
		}
		for _, name := range []string{
			"proxy listening", "control socket listening", "proxy error", "command failed",
			"deploy starting", "deploy failed", "release startup failed", "release startup process status",
			"traffic switched", "rollback starting", "process restart requested", "release stopped", "release drained",
			"process started", "process exited", "restart limit reached", "memory limit exceeded", "memory warning",
			"process stop timed out; sending SIGKILL",
			"quiet command exited non-zero", "drain command exited on signal", "stop command timed out",
			"units adopted",
		} {
			if seen[name] == 0 {
				t.Errorf("the scenario did not cause %q", name)
			}
		}
		// Values the spec pins.
		if ix := indexOf(evs, "deploy starting", "", "v1"); len(ix) == 0 || evs[ix[0]].str("revision") != "abc123" {
			t.Errorf("deploy starting of v1 lacks its revision: %+v", pick(evs, ix))
		}
		if ix := indexOf(evs, "deploy starting", "", "v2"); len(ix) == 0 {
			t.Errorf("no deploy starting for v2")
		} else if _, ok := evs[ix[0]].Data["revision"]; ok {
			t.Errorf("deploy starting of v2 has a revision although none was given: %v", evs[ix[0]].Data)
		}
		if ix := indexOf(evs, "traffic switched", "", "v1"); len(ix) == 0 || evs[ix[0]].Data["previousReleaseId"] != nil {
			t.Errorf("first switch: %+v", pick(evs, ix))
		}
		if ix := indexOf(evs, "drain command exited on signal", "hooked", ""); len(ix) == 0 || evs[ix[0]].str("signal") != "SIGTERM" {
			t.Errorf("drain hook: %+v", pick(evs, ix))
		}
		if ix := indexOf(evs, "stop command timed out", "hooked", ""); len(ix) == 0 || evs[ix[0]].num("timeoutMs") != 400 {
			t.Errorf("stop hook: %+v", pick(evs, ix))
		}
		if ix := indexOf(evs, "quiet command exited non-zero", "hooked", ""); len(ix) == 0 || evs[ix[0]].num("code") != 3 {
			t.Errorf("quiet hook: %+v", pick(evs, ix))
		}
		for _, ev := range pick(evs, indexOf(evs, "release startup failed", "", "broken")) {
			if p := ev.str("phase"); p != "before cleanup" && p != "after cleanup" {
				t.Errorf("release startup failed phase %q", p)
			}
		}
		t.Logf("%s runner: %d events, %d kinds", runner, len(evs), len(seen))
	})
}
