package exec

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	osexec "os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/account"
)

// DefaultOutputLines is the log ring size when Spec.OutputLines is 0.
const DefaultOutputLines = 50

// DefaultCloseTimeout bounds Close (see Options.CloseTimeout).
const DefaultCloseTimeout = 30 * time.Second

// ErrClosed is returned by calls made after Close or Shutdown began.
var ErrClosed = errors.New("exec runner closed")

// Options configures a Runner. The zero value is usable.
type Options struct {
	// CloseTimeout bounds Close: instances still running when it elapses
	// are SIGKILLed, whatever their grace. 0 means DefaultCloseTimeout.
	CloseTimeout time.Duration
}

// Runner runs the instances of one application as plain child processes.
// It implements units.Runner.
type Runner struct {
	app  string
	opts Options

	mu        sync.Mutex
	instances map[string]*instance
	pipes     map[*os.File]struct{} // output read ends still being read
	closed    bool

	events   broadcaster
	inflight sync.WaitGroup // Start calls past the closed check
	wg       sync.WaitGroup // exit watchers, output readers, Watch feeders
	closing  chan struct{}  // closed when Shutdown has stopped the instances
}

var _ units.Runner = (*Runner)(nil)

// instance is everything the runner knows about one name. It outlives runs
// so the log ring is kept across restarts.
type instance struct {
	name     string
	log      *ring
	starting bool // a Start is spawning it
	run      *run // the latest run; nil before the first successful start
}

// run is one execution of an instance. The fields up to mainKey are set
// before the run is published and never change; the rest are guarded by
// Runner.mu.
type run struct {
	id        units.Identity
	spec      units.Spec
	cmd       *osexec.Cmd
	pid       int // also the process group id
	startedAt time.Time
	outputs   []*os.File    // read ends of the output pipes
	done      chan struct{} // closed once exit is recorded
	mainKey   procKey

	// notify is the run's sd_notify socket (Spec.Notify), closed when the
	// main process has been reaped.
	notify *notifySocket
	// silent: a start that failed waiting for READY=1; its exit is not
	// published (its Started event never was).
	silent bool

	exit     *units.Exit
	stopping bool // a Stop signalled the tree
	stopSig  syscall.Signal
	// known holds processes that belong to the instance although they may
	// not be in its process group: the main process until it is reaped,
	// and descendants seen to have left the group (setsid).
	known map[procKey]struct{}
}

// New returns a runner for app's instances.
func New(app string, opts Options) (*Runner, error) {
	if app == "" {
		return nil, errors.New("exec runner: application name is empty")
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = DefaultCloseTimeout
	}
	return &Runner{
		app:       app,
		opts:      opts,
		instances: make(map[string]*instance),
		pipes:     make(map[*os.File]struct{}),
		closing:   make(chan struct{}),
	}, nil
}

// Kind returns "exec".
func (r *Runner) Kind() string { return "exec" }

// Start spawns the instance in its own process group and returns once the
// program has been executed.
func (r *Runner) Start(ctx context.Context, spec units.Spec) (units.Status, error) {
	spec, err := r.normalize(spec)
	if err != nil {
		return units.Status{}, err
	}
	name := spec.Identity.UnitName()
	if err := ctx.Err(); err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	cmd, err := command(spec)
	if err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}

	inst, err := r.reserve(name, spec.Identity, spec.OutputLines)
	if err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	defer r.inflight.Done()

	var ns *notifySocket
	if spec.Notify {
		if ns, err = newNotifySocket(cmd.SysProcAttr.Credential); err != nil {
			r.mu.Lock()
			inst.starting = false
			if inst.run == nil {
				delete(r.instances, name)
			}
			r.mu.Unlock()
			return units.Status{}, fmt.Errorf("start %s: notify socket: %w", name, err)
		}
		ns.setOnStatus(func(text string) {
			if _, rn := r.lookup(name); rn != nil && rn.notify == ns {
				r.events.publish(units.Event{Kind: units.EventStatus, Name: name, Identity: rn.id, PID: rn.pid, At: time.Now(), Status: text})
			}
		})
		go ns.serve()
		cmd.Env = withNotifySocket(cmd.Env, ns.path)
	}
	rn, err := spawn(cmd, spec)
	r.mu.Lock()
	inst.starting = false
	if err != nil {
		if inst.run == nil {
			delete(r.instances, name) // never ran: leave no record
		}
		r.mu.Unlock()
		if ns != nil {
			ns.close()
		}
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	rn.notify = ns
	inst.run = rn
	for _, f := range rn.outputs {
		r.pipes[f] = struct{}{}
	}
	r.mu.Unlock()

	if ns == nil {
		r.events.publish(units.Event{Kind: units.EventStarted, Name: name, Identity: rn.id, PID: rn.pid, At: rn.startedAt})
	}
	r.wg.Add(len(rn.outputs) + 1)
	for i, f := range rn.outputs {
		stream := units.Stdout
		if i == 1 {
			stream = units.Stderr
		}
		go func() {
			defer r.wg.Done()
			capture(inst.log, f, stream)
			r.mu.Lock()
			delete(r.pipes, f)
			r.mu.Unlock()
			f.Close()
		}()
	}
	go r.watch(name, rn)
	if ns != nil {
		if err := r.awaitReady(ctx, name, rn, spec.StartTimeout); err != nil {
			return units.Status{}, err
		}
		r.events.publish(units.Event{Kind: units.EventStarted, Name: name, Identity: rn.id, PID: rn.pid, At: rn.startedAt})
	}

	return units.Status{
		Name: name, Identity: rn.id, State: units.StateRunning,
		MainPID: rn.pid, PIDs: []int{rn.pid}, StartedAt: rn.startedAt,
	}, nil
}

// awaitReady waits for the run's READY=1. When the instance exits first, or
// timeout (default units.DefaultStartTimeout) or ctx ends, the instance is
// killed and its exit is not reported: the start failed.
func (r *Runner) awaitReady(ctx context.Context, name string, rn *run, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = units.DefaultStartTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var why error
	select {
	case <-rn.notify.ready:
		return nil
	case <-rn.done:
		why = fmt.Errorf("exited before sending READY=1: %w", units.ErrNotReady)
	case <-t.C:
		why = fmt.Errorf("sent no READY=1 within %v: %w", timeout, units.ErrNotReady)
	case <-ctx.Done():
		why = fmt.Errorf("waiting for READY=1: %w", ctx.Err())
	}
	r.mu.Lock()
	rn.silent = true
	r.mu.Unlock()
	kctx, cancel := context.WithTimeout(context.Background(), 2*units.KillWait)
	defer cancel()
	_ = r.Stop(kctx, name, syscall.SIGKILL, units.Grace{Timeout: units.KillWait})
	return fmt.Errorf("start %s: %w", name, why)
}

// reserve marks name as starting, or fails when it runs already or the
// runner is closed. On success the caller must call r.inflight.Done.
func (r *Runner) reserve(name string, id units.Identity, outputLines int) (*instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	r.forgetGenerationsLocked(name, id)
	inst := r.instances[name]
	if inst == nil {
		inst = &instance{name: name, log: newRing(outputLines)}
		r.instances[name] = inst
	}
	if inst.starting || inst.run != nil && inst.run.exit == nil {
		return nil, units.ErrAlreadyRunning
	}
	inst.log.resize(outputLines)
	inst.starting = true
	r.inflight.Add(1)
	return inst, nil
}

// forgetGenerationsLocked drops the records of ended incarnations of the
// same replica slot under other generations (replacements create a new
// name each time; without this the records would pile up).
func (r *Runner) forgetGenerationsLocked(name string, id units.Identity) {
	for n, inst := range r.instances {
		rn := inst.run
		if n == name || inst.starting || rn == nil || rn.exit == nil {
			continue
		}
		o := rn.id
		if o.App == id.App && o.Release == id.Release && o.Process == id.Process && o.Replica == id.Replica && o.Generation != id.Generation {
			delete(r.instances, n)
		}
	}
}

// normalize validates spec and fills the defaults.
func (r *Runner) normalize(spec units.Spec) (units.Spec, error) {
	id := &spec.Identity
	if id.Replicas < 1 {
		id.Replicas = 1
	}
	var errs []error
	if id.App != r.app {
		errs = append(errs, fmt.Errorf("Identity.App is %q but this runner manages %q", id.App, r.app))
	}
	if id.Release == "" {
		errs = append(errs, errors.New("Identity.Release is empty"))
	}
	if id.Process == "" {
		errs = append(errs, errors.New("Identity.Process is empty"))
	}
	if id.Replica < 0 || id.Replica >= id.Replicas {
		errs = append(errs, fmt.Errorf("Identity.Replica %d is outside 0..%d", id.Replica, id.Replicas-1))
	}
	if spec.Command == "" && len(spec.Argv) == 0 {
		errs = append(errs, errors.New("neither Command nor Argv is set"))
	}
	if spec.Dir == "" {
		errs = append(errs, errors.New("Dir is empty: set the working directory"))
	}
	if err := errors.Join(errs...); err != nil {
		return spec, fmt.Errorf("invalid spec for %s: %w", id.InstanceID(), err)
	}
	if spec.StopSignal == 0 {
		spec.StopSignal = syscall.SIGTERM
	}
	if spec.OutputLines <= 0 {
		spec.OutputLines = DefaultOutputLines
	}
	// NOTIFY_SOCKET of the daemon's own manager must not reach an
	// instance; a Notify instance gets its own.
	spec.Env = withoutNotifySocket(units.WithIdentityEnv(spec.Env, spec.Identity))
	spec.Argv = slices.Clone(spec.Argv)
	return spec, nil
}

// command builds the exec.Cmd for spec: program resolved, directory
// checked, credentials looked up. Nothing is started.
func command(spec units.Spec) (*osexec.Cmd, error) {
	argv := spec.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c", spec.Command}
	}
	if fi, err := os.Stat(spec.Dir); err != nil {
		return nil, fmt.Errorf("working directory: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("working directory %s is not a directory", spec.Dir)
	}
	path, err := lookPath(argv[0], spec.Dir, spec.Env)
	if err != nil {
		return nil, err
	}
	cred, err := account.Credential(spec.User, spec.Group)
	if err != nil {
		return nil, err
	}
	cmd := osexec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Dir = spec.Dir
	cmd.Env = spec.Env
	// Setpgid: the child leads a new process group, so one kill(-pgid)
	// reaches everything it forks that does not leave deliberately.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	return cmd, nil
}

// lookPath resolves argv0 like a shell would, but with the instance's PATH
// (not the daemon's); a relative path with a slash is relative to dir.
func lookPath(argv0, dir string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		p := argv0
		if !strings.HasPrefix(p, "/") {
			p = dir + "/" + p
		}
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("program: %w", err)
		}
		return p, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v // the last assignment wins, as in exec.Cmd.Env
		}
	}
	for d := range strings.SplitSeq(pathEnv, ":") {
		if d == "" || !strings.HasPrefix(d, "/") {
			continue // relative PATH entries would depend on Dir; ignore them
		}
		if p := d + "/" + argv0; checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %q not found in PATH %q", argv0, pathEnv)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// spawn starts cmd with fresh output pipes. Only the read ends stay open in
// this process; the child holds the write ends.
func spawn(cmd *osexec.Cmd, spec units.Spec) (*run, error) {
	var files []*os.File // read ends then write ends
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for range 2 {
		rd, wr, err := os.Pipe()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("output pipe: %w", err)
		}
		files = append(files, rd, wr)
	}
	// *os.File writers are handed to the child directly, so Wait does not
	// wait for the pipes to close (an escaped grandchild may hold them).
	cmd.Stdout, cmd.Stderr = files[1], files[3]
	err := cmd.Start()
	files[1].Close()
	files[3].Close()
	if err != nil {
		files[0].Close()
		files[2].Close()
		return nil, err
	}
	rn := &run{
		id:        spec.Identity,
		spec:      spec,
		cmd:       cmd,
		pid:       cmd.Process.Pid,
		startedAt: time.Now(),
		outputs:   []*os.File{files[0], files[2]},
		done:      make(chan struct{}),
		known:     make(map[procKey]struct{}),
	}
	if p, err := readProc(rn.pid); err == nil {
		rn.mainKey = p.key()
		rn.known[rn.mainKey] = struct{}{}
	}
	return rn, nil
}

// watch waits for the main process, records its exit and reports it.
func (r *Runner) watch(name string, rn *run) {
	defer r.wg.Done()
	err := rn.cmd.Wait()
	ex := exitOf(rn.cmd.ProcessState, err)
	r.mu.Lock()
	rn.exit = &ex
	delete(rn.known, rn.mainKey) // reaped: its pid may be reused from now on
	silent := rn.silent
	r.mu.Unlock()
	if rn.notify != nil {
		rn.notify.close()
	}
	// Publish before announcing the exit on done: a Stop (and so a
	// Shutdown, which then closes the Watch channels) returns on done, and
	// the exit event must already be queued for the watchers by then.
	if !silent {
		r.events.publish(units.Event{Kind: units.EventExited, Name: name, Identity: rn.id, PID: rn.pid, Exit: ex, At: time.Now()})
	}
	close(rn.done)
}

func exitOf(ps *os.ProcessState, err error) units.Exit {
	if ps == nil {
		return units.Exit{Code: -1}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return units.Exit{Code: -1, Signal: ws.Signal()}
	}
	return units.Exit{Code: ps.ExitCode()}
}

// lookup returns the instance and its latest run (nil if none).
func (r *Runner) lookup(name string) (*instance, *run) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst := r.instances[name]
	if inst == nil {
		return nil, nil
	}
	return inst, inst.run
}

// Status reports one instance.
func (r *Runner) Status(ctx context.Context, name string) (units.Status, error) {
	if err := ctx.Err(); err != nil {
		return units.Status{}, fmt.Errorf("status %s: %w", name, err)
	}
	r.mu.Lock()
	inst := r.instances[name]
	var snap snapshot
	if inst != nil {
		snap = r.snapshotLocked(inst)
	}
	r.mu.Unlock()
	if inst == nil {
		return units.Status{}, fmt.Errorf("status %s: %w", name, units.ErrNotFound)
	}
	procs, err := scanProcs()
	if err != nil {
		return units.Status{}, fmt.Errorf("status %s: %w", name, err)
	}
	return snap.status(procs), nil
}

// List returns every instance this runner started for app, sorted by name.
// It cannot see children of an earlier runner (a previous daemon): they
// are not its children, so it could neither wait for them nor read their
// output.
func (r *Runner) List(ctx context.Context, app string) ([]units.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", app, err)
	}
	if app != r.app {
		return nil, nil
	}
	r.mu.Lock()
	snaps := make([]snapshot, 0, len(r.instances))
	for _, inst := range r.instances {
		snaps = append(snaps, r.snapshotLocked(inst))
	}
	r.mu.Unlock()
	procs, err := scanProcs()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", app, err)
	}
	out := make([]units.Status, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, s.status(procs))
	}
	slices.SortFunc(out, func(a, b units.Status) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// snapshot is an instance's state copied under the lock, so /proc is read
// without holding it.
type snapshot struct {
	units.Status
	pgid  int
	known map[procKey]struct{}
}

func (r *Runner) snapshotLocked(inst *instance) snapshot {
	s := snapshot{Status: units.Status{Name: inst.name, State: units.StateStarting}}
	rn := inst.run
	if rn == nil {
		return s
	}
	s.Identity, s.StartedAt = rn.id, rn.startedAt
	s.pgid, s.known = rn.pid, maps.Clone(rn.known)
	switch {
	case inst.starting:
		s.State = units.StateStarting
	case rn.exit != nil:
		ex := *rn.exit
		s.Exit = &ex
		s.State = exitState(ex, rn.stopping, rn.stopSig)
	case rn.stopping:
		s.State, s.MainPID = units.StateStopping, rn.pid
	default:
		s.State, s.MainPID = units.StateRunning, rn.pid
	}
	return s
}

func (s snapshot) status(procs []procInfo) units.Status {
	st := s.Status
	if s.pgid != 0 {
		members := treeOf(procs, s.pgid, s.known)
		st.PIDs = pidsOf(members)
		st.MemoryBytes = rssBytes(members)
	}
	return st
}

// exitState applies units.StateExited's rule: exit code 0, or death by the
// signal a Stop sent, is a clean end.
func exitState(ex units.Exit, stopping bool, stopSig syscall.Signal) units.State {
	if ex.Signal == 0 && ex.Code == 0 || stopping && ex.Signal != 0 && ex.Signal == stopSig {
		return units.StateExited
	}
	return units.StateFailed
}

// Watch streams Started and Exited events of this runner's instances until
// ctx ends or the runner closes. See broadcaster for the delivery policy.
func (r *Runner) Watch(ctx context.Context) (<-chan units.Event, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("watch: %w", ErrClosed)
	}
	r.wg.Add(1)
	return r.events.subscribe(ctx, r.closing, r.wg.Done), nil
}

// Logs returns up to n most recent lines (oldest first); n <= 0 means all
// lines the ring holds.
func (r *Runner) Logs(ctx context.Context, name string, n int) ([]units.LogLine, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("logs %s: %w", name, err)
	}
	inst, _ := r.lookup(name)
	if inst == nil {
		return nil, fmt.Errorf("logs %s: %w", name, units.ErrNotFound)
	}
	return inst.log.last(n), nil
}

// Follow calls fn for each line added from now on, until ctx ends (its
// error is returned) or the runner closes (ErrClosed). fn runs on the
// caller's goroutine; a follower slower than the ring misses the lines
// that were overwritten before it read them.
func (r *Runner) Follow(ctx context.Context, name string, fn func(units.LogLine)) error {
	inst, _ := r.lookup(name)
	if inst == nil {
		return fmt.Errorf("follow %s: %w", name, units.ErrNotFound)
	}
	seq, grew := inst.log.cursor()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.closing:
			return fmt.Errorf("follow %s: %w", name, ErrClosed)
		case <-grew:
		}
		var lines []units.LogLine
		lines, seq, grew = inst.log.since(seq)
		for _, l := range lines {
			fn(l)
		}
	}
}
