package exec

import (
	"os"
	"strings"
	"testing"

	"github.com/rollbridge/rollbridge/units"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may choose.
	line := "4242 (we) ird (name) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	p, err := parseStat(4242, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := (procInfo{pid: 4242, ppid: 17, pgid: 4242, start: 987654}); p != want {
		t.Errorf("parseStat = %+v, want %+v", p, want)
	}
	z, err := parseStat(5, []byte("5 (x) Z 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0\n"))
	if err != nil || !z.dead {
		t.Errorf("zombie: %+v, %v", z, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S a 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77"} {
		if _, err := parseStat(1, []byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestReadSelf(t *testing.T) {
	p, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.ppid != os.Getppid() || p.start == 0 || p.dead {
		t.Errorf("readProc(self) = %+v", p)
	}
}

func TestTreeOf(t *testing.T) {
	procs := []procInfo{
		{pid: 1, ppid: 0, pgid: 1},
		{pid: 10, ppid: 1, pgid: 10, start: 5},    // leader
		{pid: 11, ppid: 10, pgid: 10},             // group member
		{pid: 12, ppid: 11, pgid: 12},             // setsid child of a member
		{pid: 13, ppid: 12, pgid: 12},             // its child
		{pid: 14, ppid: 10, pgid: 10, dead: true}, // zombie
		{pid: 20, ppid: 1, pgid: 20, start: 9},    // escapee seen earlier
		{pid: 21, ppid: 20, pgid: 20},
		{pid: 30, ppid: 1, pgid: 30, start: 8}, // reused pid of an old escapee
	}
	roots := map[procKey]struct{}{{20, 9}: {}, {30, 7}: {}}
	got := pidsOf(treeOf(procs, 10, roots))
	want := []int{10, 11, 12, 13, 20, 21}
	if len(got) != len(want) {
		t.Fatalf("treeOf = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("treeOf = %v, want %v", got, want)
		}
	}
}

func TestSplitter(t *testing.T) {
	var got []string
	emit := func(l string) { got = append(got, l) }
	var s splitter
	s.feed([]byte("a\r\n\r\n\nb"), emit)
	s.feed([]byte("c\nd"), emit)
	s.flush(emit)
	want := []string{"a", "bc", "d"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("lines %q, want %q", got, want)
	}
	got = nil
	s.feed(make([]byte, maxLineBytes+10), emit)
	if len(got) != 1 || len(got[0]) != maxLineBytes || len(s.partial) != 10 {
		t.Errorf("long line: %d pieces, partial %d", len(got), len(s.partial))
	}
}

func TestRing(t *testing.T) {
	r := newRing(3)
	seq, _ := r.cursor()
	for _, l := range []string{"1", "2", "3", "4"} {
		r.add(lines(l))
	}
	if got := texts(r.last(0)); got != "234" {
		t.Errorf("last(0) = %s", got)
	}
	if got := texts(r.last(2)); got != "34" {
		t.Errorf("last(2) = %s", got)
	}
	fresh, seq2, _ := r.since(seq) // 4 added, 3 held: 1 lost
	if texts(fresh) != "234" || seq2 != 4 {
		t.Errorf("since = %s, %d", texts(fresh), seq2)
	}
	r.resize(5)
	r.add(lines("5"))
	if got := texts(r.last(0)); got != "2345" {
		t.Errorf("after grow = %s", got)
	}
	r.resize(2)
	if got := texts(r.last(0)); got != "45" {
		t.Errorf("after shrink = %s", got)
	}
}

func BenchmarkScanProcs(b *testing.B) {
	for b.Loop() {
		if _, err := scanProcs(); err != nil {
			b.Fatal(err)
		}
	}
}

func lines(s ...string) []units.LogLine {
	out := make([]units.LogLine, len(s))
	for i, l := range s {
		out[i] = units.LogLine{Line: l}
	}
	return out
}

func texts(ls []units.LogLine) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.Line)
	}
	return b.String()
}
