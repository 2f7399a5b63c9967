package journal

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// render prints parsed lines one per line for golden comparison.
func render(lines []units.LogLine) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%d %s %q\n", l.At.UnixMicro(), l.Stream, l.Line)
	}
	return b.String()
}

func TestParseGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.jsonl")
	for _, in := range files {
		if strings.HasSuffix(in, "bad.jsonl") {
			continue
		}
		t.Run(filepath.Base(in), func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var lines []units.LogLine
			err = scan(bytes.NewReader(raw), func(b []byte) error {
				l, ok, err := Parse(b)
				if ok {
					lines = append(lines, l)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			got := render(lines)
			golden := strings.TrimSuffix(in, ".jsonl") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("parsed %s:\n%s\nwant:\n%s", in, got, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	raw, err := os.ReadFile("testdata/bad.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		if _, _, err := Parse(line); err == nil {
			t.Errorf("line %d %q: want an error", i+1, line)
		}
	}
	if _, _, err := Parse([]byte(`{"MESSAGE":[1,300],"__REALTIME_TIMESTAMP":"1"}`)); err == nil {
		t.Error("byte value 300 accepted")
	}
}

// fakeJournalctl writes a script that prints the golden input and records
// its arguments, so command construction is tested without journald.
func fakeJournalctl(t *testing.T, follow string) (prog, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	data, _ := filepath.Abs("testdata/stream.jsonl")
	script := "#!/bin/sh\nprintf '%s\\n' \"$@\" > " + argsFile + "\ncat " + data + "\n" + follow + "\n"
	prog = filepath.Join(dir, "journalctl")
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, argsFile
}

func TestLastWithFakeJournalctl(t *testing.T) {
	prog, argsFile := fakeJournalctl(t, "")
	r := Reader{Dir: "/j", Journalctl: prog}
	lines, err := r.Last(context.Background(), "ltid", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || lines[0].Line != "<3> looking like a level prefix is kept" || lines[1].Line != "unicode ✓ ünïcödé" {
		t.Errorf("Last(2) = %q", render(lines))
	}
	args, _ := os.ReadFile(argsFile)
	for _, want := range []string{"--output=json", "--all", "--directory=/j", "--lines=66", "SYSLOG_IDENTIFIER=ltid"} {
		if !strings.Contains(string(args), want+"\n") {
			t.Errorf("journalctl args %q lack %s", args, want)
		}
	}
	all, err := r.Last(context.Background(), "ltid", 0)
	if err != nil || len(all) != 9 {
		t.Errorf("Last(0) = %d lines, %v; want all 9", len(all), err)
	}
	if args, _ := os.ReadFile(argsFile); !strings.Contains(string(args), "--lines=all\n") {
		t.Errorf("Last(0) args %q", args)
	}
	if _, err := r.Last(context.Background(), "", 2); err == nil {
		t.Error("empty identifier accepted")
	}
}

func TestFollowCancelReaps(t *testing.T) {
	prog, argsFile := fakeJournalctl(t, "exec sleep 1000")
	r := Reader{Journalctl: prog}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan units.LogLine, 100)
	errc := make(chan error, 1)
	since := time.Unix(1795294079, 123456000)
	go func() { errc <- r.Follow(ctx, "ltid", since, func(l units.LogLine) { got <- l }) }()
	for i := 0; i < 3; i++ {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("no lines from Follow")
		}
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Follow after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after cancel")
	}
	args, _ := os.ReadFile(argsFile)
	if !strings.Contains(string(args), "--since=@1795294079.123456\n") || !strings.Contains(string(args), "--follow\n") {
		t.Errorf("follow args %q", args)
	}
}

// TestJournaldIntegration logs through a real journald (the sandbox's) and
// reads it back. It needs scripts/systemd-sandbox.
func TestJournaldIntegration(t *testing.T) {
	dir := os.Getenv("SYSTEMD_SANDBOX_JOURNAL_DIR")
	sbx := os.Getenv("SYSTEMD_SANDBOX_DIR")
	if dir == "" || sbx == "" {
		msg := "SKIP (no systemd sandbox): SYSTEMD_SANDBOX_DIR/SYSTEMD_SANDBOX_JOURNAL_DIR unset; boot one with scripts/systemd-sandbox start"
		if os.Getenv("ROLLBRIDGE_REQUIRE_SYSTEMD") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	script, err := filepath.Abs("../../scripts/systemd-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	ident := "rbtest-journal-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	r := Reader{Dir: dir}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	followed := make(chan units.LogLine, 100)
	ferr := make(chan error, 1)
	go func() { ferr <- r.Follow(ctx, ident, time.Now(), func(l units.LogLine) { followed <- l }) }()

	// systemd-cat inside the sandbox's mount namespace reaches its journald.
	cmd := exec.Command(script, "exec", sbx, "systemd-cat", "-t", ident, "--stderr-priority=err", "--",
		"/bin/sh", "-c", `echo one; echo two >&2; sleep 0.1; printf 'three\r\n\n'`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-cat: %v: %s", err, out)
	}
	want := []string{"one", "two", "three"}
	var lines []units.LogLine
	deadline := time.Now().Add(10 * time.Second)
	for len(lines) < 3 && time.Now().Before(deadline) {
		lines, err = r.Last(ctx, ident, 10)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(lines) != 3 {
		t.Fatalf("Last = %q, want %q", render(lines), want)
	}
	byText := map[string]units.Stream{}
	for _, l := range lines {
		byText[l.Line] = l.Stream
	}
	if byText["one"] != units.Stdout || byText["two"] != units.Stderr || byText["three"] != units.Stdout {
		t.Errorf("streams %v", byText)
	}
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case l := <-followed:
			seen[l.Line] = true
		case err := <-ferr:
			t.Fatalf("Follow ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("Follow saw %v, want %v", seen, want)
		}
	}
	cancel()
	if err := <-ferr; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow: %v", err)
	}
}
