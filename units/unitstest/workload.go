package unitstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// EnvWorkload selects the workload mode when the test binary is re-executed
// as a managed process (the pattern of tableflip's and Nomad's TestMain).
const EnvWorkload = "ROLLBRIDGE_TEST_WORKLOAD"

// Workload modes and the variables they read. Every mode writes the file
// named by READY (if set) once its signal handlers are installed, so a test
// can send signals without racing the Go runtime's start-up.
//
//	sleep              run until killed.
//	exit               sleep DELAY_MS, write time.Now().UnixNano() to TSFILE
//	                   (if set), exit with CODE (default 0).
//	ignore-term        ignore SIGTERM, run until killed.
//	trap               on SIGNAL (default SIGINT) write the signal name to
//	                   MARKER and exit 0.
//	fork-setsid-child  start a copy of itself in mode "sleep" in a new session
//	                   (setsid), write its pid to PIDFILE, run until killed.
//	                   With ORPHAN=1 the setsid process is started by an
//	                   intermediate child that exits at once, so it is
//	                   reparented away (a classic daemon).
//	print              write LINES (default 10) lines "out-N" to stdout,
//	                   INTERVAL_MS apart (default 0); then, if STDERR > 0,
//	                   pause 100 ms, write STDERR lines "err-N" to stderr,
//	                   pause 100 ms and write "end" to stdout. Exits 0 when
//	                   EXIT=1, else runs until killed.
//	env                write {"cwd":…, "env":[…], "pid":…} as JSON to OUT,
//	                   run until killed.
//	notify             write $NOTIFY_SOCKET to SOCKFILE and the pid to
//	                   PIDFILE (if set), sleep DELAY_MS, then exit with CODE
//	                   if EXIT=1, else send sd_notify READY=1 (unless
//	                   NOREADY=1) and run until killed.
//	serve-http         serve HTTP on 127.0.0.1:PORT: GET /health answers 503
//	                   until HEALTHY_AFTER_MS have passed, then 200; any other
//	                   path answers "release=<ROLLBRIDGE_RELEASE_ID>
//	                   pid=<pid>". On SIGTERM it shuts down and exits 0.
const (
	ModeSleep           = "sleep"
	ModeExit            = "exit"
	ModeIgnoreTerm      = "ignore-term"
	ModeTrap            = "trap"
	ModeForkSetsidChild = "fork-setsid-child"
	ModePrint           = "print"
	ModeEnv             = "env"
	ModeServeHTTP       = "serve-http"
	ModeNotify          = "notify"

	// modeSpawnOrphan is the intermediate of fork-setsid-child ORPHAN=1.
	modeSpawnOrphan = "spawn-orphan"
)

// WorkloadMain must be called first thing in TestMain of every package that
// runs the suite: when the process was started as a workload (EnvWorkload
// set) it runs the workload and exits; otherwise it returns at once.
func WorkloadMain() {
	mode := os.Getenv(EnvWorkload)
	if mode == "" {
		return
	}
	if err := runWorkload(mode); err != nil {
		fmt.Fprintf(os.Stderr, "workload %s: %v\n", mode, err)
		os.Exit(111)
	}
	os.Exit(0)
}

// Workload returns Spec fields that run this test binary as the named
// workload: argv for Spec.Argv and extraEnv to add to Spec.Env (after the
// base environment, so these values win). Example:
//
//	argv, env := Workload("exit", "CODE=3")
func Workload(mode string, env ...string) (argv []string, extraEnv []string) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	// -test.run=^$ keeps a binary whose TestMain forgot WorkloadMain from
	// running the tests recursively.
	argv = []string{exe, "-test.run=^$"}
	// Under -race a process exiting with code 0 sleeps 1 s in the race
	// runtime's exit hook (atexit_sleep_ms), which would distort every
	// stop and exit timing.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	extraEnv = append([]string{EnvWorkload + "=" + mode, "GORACE=" + gorace}, env...)
	return argv, extraEnv
}

func runWorkload(mode string) error {
	switch mode {
	case ModeSleep:
		ready()
		sleepForever()
	case ModeExit:
		return workloadExit()
	case ModeIgnoreTerm:
		signal.Ignore(syscall.SIGTERM)
		ready()
		sleepForever()
	case ModeTrap:
		return workloadTrap()
	case ModeForkSetsidChild:
		return workloadForkSetsid()
	case modeSpawnOrphan:
		return spawnSetsid(os.Getenv("PIDFILE"))
	case ModePrint:
		return workloadPrint()
	case ModeEnv:
		return workloadEnv()
	case ModeServeHTTP:
		return workloadServe()
	case ModeNotify:
		return workloadNotify()
	}
	return fmt.Errorf("unknown workload mode %q", mode)
}

func ready() {
	if p := os.Getenv("READY"); p != "" {
		_ = writeFileAtomic(p, []byte("ready\n"))
	}
}

func sleepForever() {
	// A timer (not select{}) so the runtime's deadlock detector stays quiet.
	for {
		time.Sleep(time.Hour)
	}
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

func workloadNotify() error {
	sock := os.Getenv("NOTIFY_SOCKET")
	for k, v := range map[string]string{"SOCKFILE": sock, "PIDFILE": strconv.Itoa(os.Getpid())} {
		if p := os.Getenv(k); p != "" {
			if err := writeFileAtomic(p, []byte(v)); err != nil {
				return err
			}
		}
	}
	time.Sleep(time.Duration(envInt("DELAY_MS", 0)) * time.Millisecond)
	if os.Getenv("EXIT") == "1" {
		os.Exit(envInt("CODE", 0))
	}
	if os.Getenv("NOREADY") != "1" {
		if sock == "" {
			return errors.New("NOTIFY_SOCKET is not set")
		}
		if strings.HasPrefix(sock, "@") {
			sock = "\x00" + sock[1:]
		}
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			return err
		}
		if _, err := c.Write([]byte("STATUS=almost\nREADY=1")); err != nil {
			return err
		}
		c.Close()
	}
	sleepForever()
	return nil
}

func workloadExit() error {
	ready()
	time.Sleep(time.Duration(envInt("DELAY_MS", 0)) * time.Millisecond)
	if p := os.Getenv("TSFILE"); p != "" {
		if err := writeFileAtomic(p, []byte(strconv.FormatInt(time.Now().UnixNano(), 10))); err != nil {
			return err
		}
	}
	os.Exit(envInt("CODE", 0))
	return nil
}

func workloadTrap() error {
	name := os.Getenv("SIGNAL")
	if name == "" {
		name = "SIGINT"
	}
	sig, ok := units.ParseSignal(name)
	if !ok {
		return fmt.Errorf("SIGNAL=%q is not a signal name", name)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	ready()
	got := (<-ch).(syscall.Signal)
	return writeFileAtomic(os.Getenv("MARKER"), []byte(units.SignalName(got)))
}

func workloadForkSetsid() error {
	pidfile := os.Getenv("PIDFILE")
	if os.Getenv("ORPHAN") == "1" {
		// The intermediate starts the setsid process and exits; Run reaps
		// it, so the setsid process is reparented to init (or a subreaper).
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), EnvWorkload+"="+modeSpawnOrphan)
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("intermediate: %w", err)
		}
	} else if err := spawnSetsid(pidfile); err != nil {
		return err
	}
	ready()
	sleepForever()
	return nil
}

func spawnSetsid(pidfile string) error {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvWorkload+"="+ModeSleep, "READY=")
	// No inherited output pipes: an escapee must not keep a runner's
	// capture open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start setsid child: %w", err)
	}
	return writeFileAtomic(pidfile, []byte(strconv.Itoa(cmd.Process.Pid)))
}

func workloadPrint() error {
	ready()
	interval := time.Duration(envInt("INTERVAL_MS", 0)) * time.Millisecond
	for i := 1; i <= envInt("LINES", 10); i++ {
		if i > 1 && interval > 0 {
			time.Sleep(interval)
		}
		fmt.Fprintf(os.Stdout, "out-%d\n", i)
	}
	if n := envInt("STDERR", 0); n > 0 {
		time.Sleep(100 * time.Millisecond)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(os.Stderr, "err-%d\n", i)
		}
		time.Sleep(100 * time.Millisecond)
		fmt.Fprintln(os.Stdout, "end")
	}
	if os.Getenv("EXIT") == "1" {
		return nil
	}
	sleepForever()
	return nil
}

// EnvReport is what the "env" workload writes to OUT.
type EnvReport struct {
	Cwd string   `json:"cwd"`
	Env []string `json:"env"`
	PID int      `json:"pid"`
}

func workloadEnv() error {
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	b, err := json.Marshal(EnvReport{Cwd: cwd, Env: os.Environ(), PID: os.Getpid()})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(os.Getenv("OUT"), b); err != nil {
		return err
	}
	ready()
	sleepForever()
	return nil
}

func workloadServe() error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Getenv("PORT")))
	if err != nil {
		return err
	}
	healthyAt := time.Now().Add(time.Duration(envInt("HEALTHY_AFTER_MS", 0)) * time.Millisecond)
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		if time.Now().Before(healthyAt) {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "release=%s pid=%d\n", os.Getenv(units.EnvReleaseID), os.Getpid())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	ready()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Serve returns as soon as Shutdown starts; wait for in-flight requests.
	<-drained
	return nil
}

// writeFileAtomic writes via a temporary file and rename so a polling test
// never reads a half-written file.
func writeFileAtomic(path string, data []byte) error {
	if path == "" {
		return fmt.Errorf("no output path given")
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
