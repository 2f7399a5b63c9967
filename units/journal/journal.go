// Package journal reads instance output back from journald without cgo: it
// runs `journalctl --output=json` and parses its line stream (go-systemd's
// sdjournal needs cgo and libsystemd headers; Rollbridge builds with
// CGO_ENABLED=0).
//
// Lines are selected by SYSLOG_IDENTIFIER, which the systemd runner makes
// unique per instance. That field travels in the stream header of every
// stdout/stderr line, so it works under a user manager too, where
// LogExtraFields are not applied, and it excludes the manager's own
// "Started …" lines.
//
// journald does not record which stream a line came from. The systemd runner
// gives stderr its own journal stream with priority err (3), so a line with
// PRIORITY ≤ 3 is reported as stderr and every other line as stdout (a
// program that prefixes stdout lines with "<3>" is reported as stderr too).
package journal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// Reader runs journalctl. The zero value reads the default journal with
// the journalctl found in PATH.
type Reader struct {
	// Dir is passed as --directory (e.g. the test sandbox's
	// $SYSTEMD_SANDBOX_JOURNAL_DIR); "" reads the default journal.
	Dir string
	// Journalctl is the program to run; "journalctl" when empty.
	Journalctl string
}

// maxEntry bounds one JSON line: journald's LineMax is 48 KiB, and a binary
// MESSAGE is printed as a number array (up to 4 bytes per byte).
const maxEntry = 4 << 20

func (r Reader) command(ctx context.Context, identifier string, extra ...string) (*exec.Cmd, error) {
	if identifier == "" {
		return nil, errors.New("journal: empty syslog identifier")
	}
	prog := r.Journalctl
	if prog == "" {
		prog = "journalctl"
	}
	// -a: without it journalctl prints fields over 4 KiB as null.
	args := []string{"--output=json", "--all", "--quiet", "--no-pager"}
	if r.Dir != "" {
		args = append(args, "--directory="+r.Dir)
	}
	args = append(args, extra...)
	args = append(args, "SYSLOG_IDENTIFIER="+identifier)
	cmd := exec.CommandContext(ctx, prog, args...)
	// A journalctl that ignores the kill must not hold Wait forever.
	cmd.WaitDelay = 2 * time.Second
	return cmd, nil
}

// Last returns up to n of the most recent non-empty lines of identifier,
// oldest first; n <= 0 returns all of them.
func (r Reader) Last(ctx context.Context, identifier string, n int) ([]units.LogLine, error) {
	if n <= 0 {
		lines, _, err := r.last(ctx, identifier, 0)
		return lines, err
	}
	// Empty lines are journal entries too; ask for a margin and widen the
	// window until n lines are found or the journal has no more.
	window := n + 64
	for {
		lines, entries, err := r.last(ctx, identifier, window)
		if err != nil {
			return nil, err
		}
		if len(lines) >= n || entries < window {
			if len(lines) > n {
				lines = lines[len(lines)-n:]
			}
			return lines, nil
		}
		window *= 4
	}
}

func (r Reader) last(ctx context.Context, identifier string, window int) ([]units.LogLine, int, error) {
	lines := "--lines=all"
	if window > 0 {
		lines = "--lines=" + strconv.Itoa(window)
	}
	cmd, err := r.command(ctx, identifier, lines)
	if err != nil {
		return nil, 0, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, 0, fmt.Errorf("journal: %s: %w%s", strings.Join(cmd.Args, " "), err, stderrSuffix(stderr.Bytes()))
	}
	var parsed []units.LogLine
	entries := 0
	err = scan(bytes.NewReader(out), func(raw []byte) error {
		entries++
		l, ok, err := Parse(raw)
		if err != nil {
			return err
		}
		if ok {
			parsed = append(parsed, l)
		}
		return nil
	})
	return parsed, entries, err
}

// Follow calls fn for every line of identifier logged at or after since,
// then for each new one, until ctx ends; it returns ctx's error (the
// journalctl process is killed and reaped) or a read/parse error.
//
// It starts from --since rather than `-n 0`: journalctl -f -n 0 seeks to
// the tail lazily and misses the first ~250 ms of lines.
func (r Reader) Follow(ctx context.Context, identifier string, since time.Time, fn func(units.LogLine)) error {
	us := since.UnixMicro()
	cmd, err := r.command(ctx, identifier, "--follow", "--lines=all",
		fmt.Sprintf("--since=@%d.%06d", us/1e6, us%1e6))
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("journal: start %s: %w", cmd.Path, err)
	}
	scanErr := scan(stdout, func(raw []byte) error {
		l, ok, err := Parse(raw)
		if err != nil {
			return err
		}
		if ok {
			fn(l)
		}
		return nil
	})
	if scanErr != nil && ctx.Err() == nil {
		// Stop journalctl before reaping it: it would block on a full pipe.
		_ = cmd.Process.Kill()
	}
	waitErr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case scanErr != nil:
		return scanErr
	case waitErr != nil:
		return fmt.Errorf("journal: %s: %w%s", strings.Join(cmd.Args, " "), waitErr, stderrSuffix(stderr.Bytes()))
	}
	return fmt.Errorf("journal: journalctl --follow ended unexpectedly%s", stderrSuffix(stderr.Bytes()))
}

func stderrSuffix(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	return ": " + s
}

// scan calls fn for every line of r (one JSON object per line).
func scan(r io.Reader, fn func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxEntry)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("journal: read journalctl output: %w", err)
	}
	return nil
}

// entry holds the fields Parse needs of one `journalctl -o json` object.
type entry struct {
	Message  json.RawMessage `json:"MESSAGE"`
	Priority json.RawMessage `json:"PRIORITY"`
	Realtime string          `json:"__REALTIME_TIMESTAMP"`
}

// Parse decodes one line of `journalctl -o json`. ok is false for entries
// that are not output lines: empty lines (including a lone "\r" left over
// from "\r\n"), and entries without a MESSAGE.
func Parse(raw []byte) (l units.LogLine, ok bool, err error) {
	var e entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return units.LogLine{}, false, fmt.Errorf("journal: parse entry: %w", err)
	}
	msg, err := fieldBytes(e.Message)
	if err != nil {
		return units.LogLine{}, false, fmt.Errorf("journal: MESSAGE: %w", err)
	}
	line := strings.TrimRight(string(msg), "\r")
	if line == "" {
		return units.LogLine{}, false, nil
	}
	us, err := strconv.ParseInt(e.Realtime, 10, 64)
	if err != nil {
		return units.LogLine{}, false, fmt.Errorf("journal: __REALTIME_TIMESTAMP %q: %w", e.Realtime, err)
	}
	stream := units.Stdout
	if p, err := fieldBytes(e.Priority); err == nil {
		if n, err := strconv.Atoi(string(p)); err == nil && n <= 3 {
			stream = units.Stderr
		}
	}
	return units.LogLine{At: time.UnixMicro(us), Line: line, Stream: stream}, true, nil
}

// fieldBytes decodes a journal field as journalctl prints it: a string, an
// array of byte values (non-UTF-8 or control characters), null (absent), or
// an array of those when the field occurs more than once (the last wins).
func fieldBytes(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	switch raw[0] {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return []byte(s), err
	case '[':
		var nums []byte
		var ints []int
		if err := json.Unmarshal(raw, &ints); err == nil {
			nums = make([]byte, len(ints))
			for i, v := range ints {
				if v < 0 || v > 255 {
					return nil, fmt.Errorf("byte value %d out of range", v)
				}
				nums[i] = byte(v)
			}
			return nums, nil
		}
		var many []json.RawMessage
		if err := json.Unmarshal(raw, &many); err != nil {
			return nil, err
		}
		if len(many) == 0 {
			return nil, nil
		}
		return fieldBytes(many[len(many)-1])
	}
	return nil, fmt.Errorf("unexpected JSON %.20s", raw)
}
