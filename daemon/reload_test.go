package daemon

import (
	"context"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rollbridge/rollbridge/units"
)

// kindRunner is a units.Runner that only answers Kind.
type kindRunner struct {
	units.Runner
	kind string
}

func (r kindRunner) Kind() string { return r.kind }

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestSuccessorCmdPassesMetricsListener checks the fd layout a reload hands
// to the new daemon: every listener named in LISTEN_FDNAMES in fd order,
// the readiness pipe right after them, and the metrics address carried as a
// flag.
func TestSuccessorCmdPassesMetricsListener(t *testing.T) {
	for _, tc := range []struct {
		name      string
		metrics   string
		wantNames string
		wantFlag  string
	}{
		{"metrics on", "127.0.0.1:9464", "proxy:control:metrics", "--metrics-listen=127.0.0.1:9464"},
		// An explicit empty value keeps ROLLBRIDGE_METRICS_LISTEN from
		// turning metrics on in the successor.
		{"metrics off", "", "proxy:control", "--metrics-listen="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &daemon{opts: Options{ConfigPath: "/etc/rollbridge/shop.js", MetricsListen: tc.metrics}, runner: kindRunner{kind: RunnerSystemd}}
			lns := []namedListener{{"proxy", listenTCP(t)}, {"control", listenTCP(t)}}
			if tc.metrics != "" {
				lns = append(lns, namedListener{metricsFDName, listenTCP(t)})
			}
			files := make([]*os.File, len(lns))
			for i, nl := range lns {
				f, err := listenerFile(nl.ln)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				files[i] = f
			}
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()

			cmd := d.successorCmd("/usr/bin/rollbridge", lns, files, w)

			wantArgs := []string{"/usr/bin/rollbridge", "daemon", "--config", "/etc/rollbridge/shop.js", "--runner", "systemd", tc.wantFlag}
			if !slices.Equal(cmd.Args, wantArgs) {
				t.Errorf("args %q, want %q", cmd.Args, wantArgs)
			}
			env := map[string]string{}
			for _, kv := range cmd.Env {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
			n := len(lns)
			want := map[string]string{
				"LISTEN_FDS":     strconv.Itoa(n),
				"LISTEN_FDNAMES": tc.wantNames,
				envReexec:        "1",
				envReadyFD:       strconv.Itoa(3 + n),
			}
			for k, v := range want {
				if env[k] != v {
					t.Errorf("%s=%q, want %q", k, env[k], v)
				}
			}
			if _, ok := env["LISTEN_PID"]; ok {
				t.Errorf("LISTEN_PID set by the parent; the successor claims it itself")
			}
			// ExtraFiles[i] becomes fd 3+i.
			if len(cmd.ExtraFiles) != n+1 || cmd.ExtraFiles[n] != w {
				t.Fatalf("extra files %v: want the %d listeners then the readiness pipe", cmd.ExtraFiles, n)
			}
			for i := range files {
				if cmd.ExtraFiles[i] != files[i] {
					t.Errorf("fd %d is not the %s listener", 3+i, lns[i].name)
				}
			}
		})
	}
}

// TestMetricsListenerPrefersPassedSocket: a successor serves metrics on the
// socket its predecessor passed instead of binding the address again (which
// the predecessor still holds: EADDRINUSE).
func TestMetricsListenerPrefersPassedSocket(t *testing.T) {
	held := listenTCP(t)
	d := &daemon{opts: Options{MetricsListen: held.Addr().String()}}
	passed := listenTCP(t)
	ln, inherited, err := d.metricsListener(context.Background(), map[string][]net.Listener{metricsFDName: {passed}})
	if err != nil || !inherited || ln != passed {
		t.Fatalf("metricsListener = %v, %v, %v; want the passed listener", ln, inherited, err)
	}
	// Without a passed socket it binds, and a held address is an error
	// naming it.
	if _, _, err := d.metricsListener(context.Background(), nil); err == nil || !strings.Contains(err.Error(), held.Addr().String()) {
		t.Fatalf("bind of a held address: %v", err)
	}
}
