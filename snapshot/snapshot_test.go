package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as the "rollbridge" being snapshotted: run with
// ManifestEnv set (as Prepare runs the copy) it acts as a fake CLI, and
// with envChildBase set it runs Prepare in a separate process.
const (
	envChildBase = "SNAPSHOT_TEST_CHILD_BASE" // child: Prepare into this base
	envChildExe  = "SNAPSHOT_TEST_CHILD_EXE"  // child: the binary to snapshot
	envHelpFail  = "SNAPSHOT_TEST_HELP_FAIL"  // fake CLI: --help exits 3
	envHelpSleep = "SNAPSHOT_TEST_HELP_SLEEP" // fake CLI: --help hangs
	testVersion  = "1.2.3-test"
)

func TestMain(m *testing.M) {
	if manifest, ok := os.LookupEnv(ManifestEnv); ok {
		os.Exit(fakeCLI(manifest, os.Args[1:]))
	}
	if base := os.Getenv(envChildBase); base != "" {
		os.Exit(childPrepare(base, os.Getenv(envChildExe)))
	}
	// A -race child otherwise sleeps 1 s at exit, and every Prepare runs
	// the snapshotted test binary.
	if v := os.Getenv("GORACE"); !strings.Contains(v, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(v+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// fakeCLI stands in for `rollbridge --help` (and `verify`, which runs
// Verify from inside the snapshot the way a daemon would).
func fakeCLI(manifest string, args []string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch {
	case len(args) == 1 && args[0] == "--help":
		if os.Getenv(envHelpFail) != "" {
			fmt.Fprintln(os.Stderr, "fake rollbridge: broken on purpose")
			return 3
		}
		if os.Getenv(envHelpSleep) != "" {
			time.Sleep(time.Minute)
		}
		// The manifest must sit next to the binary being smoke-tested.
		if filepath.Dir(manifest) != filepath.Dir(exe) {
			fmt.Fprintf(os.Stderr, "manifest %s is not next to %s\n", manifest, exe)
			return 4
		}
		if _, err := os.Stat(manifest); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 5
		}
		fmt.Println("Usage: rollbridge [command]")
		return 0
	case len(args) == 1 && args[0] == "verify":
		id, err := Verify(manifest, exe)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(id)
		return 0
	}
	fmt.Fprintf(os.Stderr, "fake rollbridge: unexpected arguments %q\n", args)
	return 2
}

// childPrepare waits for one byte on stdin (a start barrier shared by all
// children), prepares, and prints the identity as JSON.
func childPrepare(base, exe string) int {
	if _, err := bufio.NewReader(os.Stdin).ReadByte(); err != nil && err != io.EOF {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	id, err := Prepare(context.Background(), base, exe, testVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(id)
	return 0
}

func testExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// variantExe is a copy of the test binary with extra trailing bytes: it
// still runs (ELF ignores them) but has another digest.
func variantExe(t *testing.T, extra string) string {
	t.Helper()
	data, err := os.ReadFile(testExe(t))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rollbridge-variant")
	if err := os.WriteFile(p, append(data, extra...), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// newBase returns a not-yet-existing base under a private temp dir.
func newBase(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "runtime")
}

func mustPrepare(t *testing.T, base, exe string) Identity {
	t.Helper()
	id, err := Prepare(context.Background(), base, exe, testVersion)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return id
}

// baseEntries lists base, failing on any leftover staging directory.
func baseEntries(t *testing.T, base string) []string {
	t.Helper()
	entries, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stagingPrefix) {
			t.Errorf("staging directory left behind: %s", e.Name())
		}
		names = append(names, e.Name())
	}
	return names
}

func wantOnly(t *testing.T, base string, names ...string) {
	t.Helper()
	got := baseEntries(t, base)
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %q, want %q", base, got, names)
	}
}

func perm(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestDefaultBase(t *testing.T) {
	// sha256("demo") = 2a97516c354b6884...
	if got, want := DefaultBase(1000, "demo"), "/tmp/rollbridge-1000-2a97516c354b6884-runtime"; got != want {
		t.Errorf("DefaultBase = %q, want %q", got, want)
	}
}

func TestMismatchText(t *testing.T) {
	const want = "The running Rollbridge daemon has a legacy or mismatched runtime. The deploy was not sent. Keep the current release active, then explicitly stop and restart the daemon with this Rollbridge installation before retrying."
	if ErrMismatch.Error() != want {
		t.Errorf("ErrMismatch = %q", ErrMismatch)
	}
}

func TestDigestDefinition(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"a/b": "one", "a-c": "two", "rollbridge": "three", ManifestName: "ignored"}
	for rel, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h := sha256.New()
	// Byte order of whole paths: "a-c" < "a/b" < "rollbridge".
	for _, rel := range []string{"a-c", "a/b", "rollbridge"} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(files[rel])))
		h.Write([]byte(rel + "\x00"))
		h.Write(n[:])
		h.Write([]byte(files[rel]))
	}
	want := hex.EncodeToString(h.Sum(nil))
	got, err := Digest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Digest = %s, want %s", got, want)
	}

	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := Digest(dir); err == nil || !strings.Contains(err.Error(), "link is not a regular file") {
		t.Errorf("Digest with a symlink: err = %v, want a refusal", err)
	}
}

func TestPrepareFresh(t *testing.T) {
	base, exe := newBase(t), testExe(t)
	start := time.Now()
	id := mustPrepare(t, base, exe)
	t.Logf("fresh prepare took %s", time.Since(start))

	described, err := Describe(exe, testVersion)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(base, described.Digest)
	if want := (Identity{Digest: described.Digest, Format: 1, Path: final, Version: testVersion}); id != want {
		t.Errorf("identity = %+v, want %+v", id, want)
	}
	if got := perm(t, base); got != 0o700 {
		t.Errorf("base mode %04o, want 0700", got)
	}
	if got := perm(t, filepath.Join(final, BinaryName)); got != 0o755 {
		t.Errorf("binary mode %04o, want 0755", got)
	}
	if got := perm(t, filepath.Join(final, ManifestName)); got != 0o600 {
		t.Errorf("manifest mode %04o, want 0600", got)
	}
	src, _ := os.ReadFile(exe)
	dst, _ := os.ReadFile(filepath.Join(final, BinaryName))
	if !bytes.Equal(src, dst) {
		t.Error("snapshot binary differs from the source")
	}
	raw, err := os.ReadFile(filepath.Join(final, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"digest":%q,"format":1,"path":%q,"version":%q}`+"\n", id.Digest, final, testVersion)
	if string(raw) != want {
		t.Errorf("runtime.json = %s, want %s", raw, want)
	}
	wantOnly(t, base, id.Digest)
}

func TestPrepareReusesSnapshot(t *testing.T) {
	base, exe := newBase(t), testExe(t)
	first := mustPrepare(t, base, exe)
	before, err := os.Stat(filepath.Join(first.Path, BinaryName))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	second := mustPrepare(t, base, exe)
	t.Logf("reusing prepare took %s", time.Since(start))
	if second != first {
		t.Errorf("second identity %+v, want %+v", second, first)
	}
	after, err := os.Stat(filepath.Join(first.Path, BinaryName))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("the snapshot binary was replaced instead of reused")
	}
	wantOnly(t, base, first.Digest)

	// Another binary gets its own content-addressed directory.
	other := mustPrepare(t, base, variantExe(t, "other build"))
	if other.Digest == first.Digest {
		t.Fatal("a different binary got the same digest")
	}
	names := []string{first.Digest, other.Digest}
	sort.Strings(names)
	wantOnly(t, base, names...)
}

// TestPrepareRenameMeetsExisting takes the staging path even though the
// snapshot exists, as the loser of a race does.
func TestPrepareRenameMeetsExisting(t *testing.T) {
	base, exe := newBase(t), testExe(t)
	id := mustPrepare(t, base, exe)
	p := preparer{helpTimeout: helpTimeout, alwaysStage: true}
	got, err := p.prepare(context.Background(), base, exe, testVersion)
	if err != nil {
		t.Fatal(err)
	}
	if got != id {
		t.Errorf("identity %+v, want %+v", got, id)
	}
	wantOnly(t, base, id.Digest)

	flipByte(t, filepath.Join(id.Path, BinaryName))
	_, err = p.prepare(context.Background(), base, exe, testVersion)
	wantValidationError(t, err, id.Path, "content digest")
	wantOnly(t, base, id.Digest)
}

func TestPreparePrunesStaleStaging(t *testing.T) {
	base := newBase(t)
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	stale, live := filepath.Join(base, stagingPrefix+"dead"), filepath.Join(base, stagingPrefix+"busy")
	for _, p := range []string{stale, live} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, BinaryName), []byte("partial"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	id := mustPrepare(t, base, testExe(t))
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale staging directory survived: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a recent (possibly live) staging directory was removed: %v", err)
	}
	os.RemoveAll(live)
	wantOnly(t, base, id.Digest)
}

func TestPrepareConcurrentGoroutines(t *testing.T) {
	base, exe := newBase(t), testExe(t)
	const n = 8
	ids := make([]Identity, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			ids[i], errs[i] = Prepare(context.Background(), base, exe, testVersion)
		})
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	t.Logf("%d concurrent prepares took %s", n, time.Since(start))
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Prepare #%d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Errorf("Prepare #%d = %+v, want %+v", i, ids[i], ids[0])
		}
	}
	wantOnly(t, base, ids[0].Digest)
}

func TestPrepareConcurrentProcesses(t *testing.T) {
	base, exe := newBase(t), testExe(t)
	const n = 3
	type child struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		stdout bytes.Buffer
		stderr bytes.Buffer
	}
	children := make([]*child, n)
	for i := range children {
		c := &child{cmd: exec.Command(exe, "-test.run=^$")}
		c.cmd.Env = append(os.Environ(), envChildBase+"="+base, envChildExe+"="+exe)
		c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
		stdin, err := c.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.stdin = stdin
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Only if the test failed before Wait; Kill of a reaped
			// process is a harmless error.
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		})
		children[i] = c
	}
	// Release all children at once.
	for _, c := range children {
		c.stdin.Write([]byte{1})
		c.stdin.Close()
	}
	var ids []Identity
	for i, c := range children {
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v: %s", i, err, c.stderr.String())
		}
		var id Identity
		if err := json.Unmarshal(c.stdout.Bytes(), &id); err != nil {
			t.Fatalf("child %d printed %q: %v", i, c.stdout.String(), err)
		}
		ids = append(ids, id)
	}
	for i, id := range ids {
		if id != ids[0] || id.Digest == "" {
			t.Errorf("child %d = %+v, want %+v", i, id, ids[0])
		}
	}
	wantOnly(t, base, ids[0].Digest)
	if _, err := Verify(filepath.Join(ids[0].Path, ManifestName), filepath.Join(ids[0].Path, BinaryName)); err != nil {
		t.Errorf("Verify the converged snapshot: %v", err)
	}
}

func flipByte(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 1000); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 1000); err != nil {
		t.Fatal(err)
	}
}

func wantValidationError(t *testing.T, err error, dir, reason string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a *ValidationError", err)
	}
	prefix := "Rollbridge daemon runtime validation failed at " + dir + ": "
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("err = %q, want prefix %q", err, prefix)
	}
	if !strings.Contains(err.Error(), reason) {
		t.Errorf("err = %q, want it to mention %q", err, reason)
	}
}

func editManifest(t *testing.T, dir string, edit func(m map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, ManifestName)
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareCorruptExistingFailsClosed(t *testing.T) {
	cases := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		reason  string
	}{
		{"flipped byte in binary", func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, BinaryName))
		}, "content digest"},
		{"manifest digest edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["digest"] = strings.Repeat("0", 64) })
		}, "does not match manifest digest"},
		{"manifest path edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["path"] = "/elsewhere" })
		}, "manifest path"},
		{"manifest format edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["format"] = 2 })
		}, "manifest format 2"},
		{"manifest version edited", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["version"] = "0.0.1" })
		}, "manifest version"},
		{"manifest unknown field", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["extra"] = true })
		}, "not a valid manifest"},
		{"manifest removed", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, ManifestName))
		}, "cannot read runtime.json"},
		{"extra file", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "extra"), []byte("x"), 0o600)
		}, "content digest"},
		{"binary group-writable", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, BinaryName), 0o775)
		}, "group- or other-writable"},
		{"binary replaced by a symlink", func(t *testing.T, dir string) {
			p := filepath.Join(dir, BinaryName)
			os.Rename(p, p+".real")
			os.Symlink(p+".real", p)
		}, "not a regular file"},
		{"snapshot dir is a file", func(t *testing.T, dir string) {
			os.RemoveAll(dir)
			os.WriteFile(dir, []byte("x"), 0o600)
		}, "not a directory"},
		{"snapshot dir group-writable", func(t *testing.T, dir string) {
			os.Chmod(dir, 0o770)
		}, "group- or other-writable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, exe := newBase(t), testExe(t)
			id := mustPrepare(t, base, exe)
			tc.corrupt(t, id.Path)
			_, err := Prepare(context.Background(), base, exe, testVersion)
			wantValidationError(t, err, id.Path, tc.reason)
			// Fail closed: nothing repaired, nothing staged.
			wantOnly(t, base, id.Digest)
		})
	}
}

func TestPrepareHelpFailure(t *testing.T) {
	base := newBase(t)
	t.Setenv(envHelpFail, "1")
	_, err := Prepare(context.Background(), base, testExe(t), testVersion)
	var ve *ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "rollbridge --help failed: exit status 3: fake rollbridge: broken on purpose") {
		t.Fatalf("err = %v, want a --help validation failure", err)
	}
	// Nothing is published when the staging copy does not validate.
	wantOnly(t, base)
}

func TestPrepareHelpTimeout(t *testing.T) {
	base := newBase(t)
	t.Setenv(envHelpSleep, "1")
	p := preparer{helpTimeout: 300 * time.Millisecond}
	start := time.Now()
	_, err := p.prepare(context.Background(), base, testExe(t), testVersion)
	if err == nil || !strings.Contains(err.Error(), "rollbridge --help did not finish within 300ms") {
		t.Fatalf("err = %v, want a timeout", err)
	}
	t.Logf("timed out after %s", time.Since(start))
	wantOnly(t, base)
}

func TestPrepareRefusesUnsafeBase(t *testing.T) {
	exe := testExe(t)
	mkdir := func(t *testing.T, p string, mode os.FileMode) {
		t.Helper()
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask-proof
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		setup  func(t *testing.T, root string) string // returns base
		reason string
	}{
		{"symlinked base", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "real"), 0o700)
			os.Symlink(filepath.Join(root, "real"), filepath.Join(root, "base"))
			return filepath.Join(root, "base")
		}, "base is a symbolic link"},
		{"symlinked ancestor", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "real"), 0o755)
			os.Symlink(filepath.Join(root, "real"), filepath.Join(root, "link"))
			return filepath.Join(root, "link", "base")
		}, "link is a symbolic link"},
		{"group-writable base", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "base"), 0o770)
			return filepath.Join(root, "base")
		}, "base is group- or other-writable (mode 0770)"},
		{"other-writable base", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "base"), 0o707)
			return filepath.Join(root, "base")
		}, "(mode 0707)"},
		{"sticky world-writable base", func(t *testing.T, root string) string {
			p := filepath.Join(root, "base")
			mkdir(t, p, 0o777)
			os.Chmod(p, 0o777|os.ModeSticky)
			return p
		}, "base is group- or other-writable"},
		{"world-writable ancestor without sticky bit", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "shared"), 0o777)
			return filepath.Join(root, "shared", "base")
		}, "shared is group- or other-writable without the sticky bit (mode 0777)"},
		{"group-writable ancestor without sticky bit", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "shared"), 0o775)
			return filepath.Join(root, "shared", "base")
		}, "without the sticky bit (mode 0775)"},
		{"base is a file", func(t *testing.T, root string) string {
			mkdir(t, filepath.Join(root, "dir"), 0o700)
			os.WriteFile(filepath.Join(root, "dir", "base"), nil, 0o600)
			return filepath.Join(root, "dir", "base")
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := tc.setup(t, t.TempDir())
			_, err := Prepare(context.Background(), base, exe, testVersion)
			if err == nil {
				t.Fatal("Prepare accepted an unsafe base")
			}
			if tc.reason != "" && (!errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), tc.reason)) {
				t.Errorf("err = %v, want ErrUnsafePath mentioning %q", err, tc.reason)
			}
			// Refused before anything was written into it.
			if entries, err := os.ReadDir(base); err == nil && len(entries) > 0 {
				t.Errorf("unsafe base was written to: %v", entries)
			}
		})
	}

	t.Run("relative base", func(t *testing.T) {
		_, err := Prepare(context.Background(), "relative/runtime", exe, testVersion)
		if !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), "must be absolute") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestPrepareAcceptsStickyAncestor(t *testing.T) {
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, filepath.Join(shared, "base"), testExe(t))
}

// nobody returns a uid other than ours for chown, skipping loudly unless
// the test runs as root.
func nobody(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: chown to another user needs root; ownership checks not exercised")
	}
	return 65534
}

func TestPrepareRefusesForeignOwner(t *testing.T) {
	t.Run("leaf owned by another user", func(t *testing.T) {
		// Without root, / (owned by root) is a leaf we do not own; it
		// exists, so Prepare creates nothing before refusing it.
		base, uid := "/", 0
		if os.Geteuid() == 0 {
			uid = nobody(t)
			base = filepath.Join(t.TempDir(), "base")
			if err := os.Mkdir(base, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(base, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
		_, err := Prepare(context.Background(), base, testExe(t), testVersion)
		if !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), fmt.Sprintf("%s is owned by uid %d, not the current user", base, uid)) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("ancestor owned by another user", func(t *testing.T) {
		uid := nobody(t)
		parent := filepath.Join(t.TempDir(), "theirs")
		if err := os.Mkdir(parent, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(parent, uid, uid); err != nil {
			t.Fatal(err)
		}
		_, err := Prepare(context.Background(), filepath.Join(parent, "base"), testExe(t), testVersion)
		if !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), fmt.Sprintf("theirs is owned by uid %d, neither root nor the current user", uid)) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestVerify(t *testing.T) {
	base := newBase(t)
	id := mustPrepare(t, base, testExe(t))
	manifest := filepath.Join(id.Path, ManifestName)
	bin := filepath.Join(id.Path, BinaryName)

	t.Run("happy path", func(t *testing.T) {
		got, err := Verify(manifest, bin)
		if err != nil || got != id {
			t.Fatalf("Verify = %+v, %v; want %+v", got, err, id)
		}
	})
	t.Run("from inside the snapshot", func(t *testing.T) {
		// As a daemon started by ensure-daemon does, with os.Executable().
		cmd := exec.Command(bin, "verify")
		cmd.Env = append(os.Environ(), ManifestEnv+"="+manifest)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("verify in the snapshot: %v", err)
		}
		var got Identity
		if err := json.Unmarshal(out, &got); err != nil || got != id {
			t.Fatalf("snapshot reported %s (%v), want %+v", out, err, id)
		}
	})
	t.Run("executable through a symlink", func(t *testing.T) {
		link := filepath.Join(t.TempDir(), "rb")
		if err := os.Symlink(bin, link); err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(manifest, link); err != nil {
			t.Errorf("Verify: %v", err)
		}
	})

	t.Run("relative manifest path", func(t *testing.T) {
		_, err := Verify("runtime.json", bin)
		if err == nil || !strings.Contains(err.Error(), "must be an absolute path") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("not the snapshot executable", func(t *testing.T) {
		_, err := Verify(manifest, testExe(t))
		wantValidationError(t, err, id.Path, "the running executable")
	})
	t.Run("manifest moved to another directory", func(t *testing.T) {
		dir := t.TempDir()
		raw, _ := os.ReadFile(manifest)
		os.WriteFile(filepath.Join(dir, ManifestName), raw, 0o600)
		_, err := Verify(filepath.Join(dir, ManifestName), bin)
		wantValidationError(t, err, dir, "is not the manifest's directory")
	})
	t.Run("manifest with another name", func(t *testing.T) {
		_, err := Verify(filepath.Join(id.Path, "other.json"), bin)
		wantValidationError(t, err, id.Path, "must name a runtime.json")
	})

	mutated := func(t *testing.T) Identity {
		t.Helper()
		return mustPrepare(t, newBase(t), testExe(t))
	}
	t.Run("digest mismatch", func(t *testing.T) {
		id := mutated(t)
		flipByte(t, filepath.Join(id.Path, BinaryName))
		_, err := Verify(filepath.Join(id.Path, ManifestName), filepath.Join(id.Path, BinaryName))
		wantValidationError(t, err, id.Path, "does not match manifest digest")
	})
	t.Run("format mismatch", func(t *testing.T) {
		id := mutated(t)
		editManifest(t, id.Path, func(m map[string]any) { m["format"] = 0 })
		_, err := Verify(filepath.Join(id.Path, ManifestName), filepath.Join(id.Path, BinaryName))
		wantValidationError(t, err, id.Path, "manifest format 0 is not 1")
	})
	t.Run("path mismatch", func(t *testing.T) {
		id := mutated(t)
		editManifest(t, id.Path, func(m map[string]any) { m["path"] = filepath.Dir(id.Path) })
		_, err := Verify(filepath.Join(id.Path, ManifestName), filepath.Join(id.Path, BinaryName))
		wantValidationError(t, err, id.Path, "is not the manifest's directory")
	})
	t.Run("directory is not the digest", func(t *testing.T) {
		id := mutated(t)
		moved := filepath.Join(filepath.Dir(id.Path), "renamed")
		if err := os.Rename(id.Path, moved); err != nil {
			t.Fatal(err)
		}
		editManifest(t, moved, func(m map[string]any) { m["path"] = moved })
		_, err := Verify(filepath.Join(moved, ManifestName), filepath.Join(moved, BinaryName))
		wantValidationError(t, err, moved, "directory name is not the content digest")
	})
}

func TestDescribeMatchesSnapshot(t *testing.T) {
	exe := testExe(t)
	id := mustPrepare(t, newBase(t), exe)
	direct, err := Describe(exe, testVersion)
	if err != nil {
		t.Fatal(err)
	}
	if direct.Path != exe || !Compatible(&direct, id) {
		t.Errorf("Describe = %+v, want compatible with %+v and path %s", direct, id, exe)
	}
	if _, err := Describe(filepath.Join(t.TempDir(), "missing"), testVersion); err == nil {
		t.Error("Describe of a missing binary succeeded")
	}
}

func TestCompatible(t *testing.T) {
	prepared := Identity{Digest: "abc", Format: 1, Path: "/tmp/x/abc", Version: "1.0.0"}
	with := func(edit func(*Identity)) *Identity {
		id := prepared
		edit(&id)
		return &id
	}
	cases := []struct {
		name    string
		running *Identity
		want    bool
	}{
		{"missing (legacy daemon)", nil, false},
		{"identical", with(func(*Identity) {}), true},
		{"other path, same code", with(func(id *Identity) { id.Path = "/usr/bin/rollbridge" }), true},
		{"other version", with(func(id *Identity) { id.Version = "1.0.1" }), false},
		{"other digest", with(func(id *Identity) { id.Digest = "abd" }), false},
		{"other format", with(func(id *Identity) { id.Format = 2 }), false},
		{"empty identity", &Identity{}, false},
	}
	for _, tc := range cases {
		if got := Compatible(tc.running, prepared); got != tc.want {
			t.Errorf("%s: Compatible = %v, want %v", tc.name, got, tc.want)
		}
	}
	if Compatible(&Identity{Format: 1}, Identity{Format: 1}) {
		t.Error("two identities without digests must not be compatible")
	}
}

// BenchmarkPrepare measures a prepare that finds its snapshot (the common
// case: every deploy --ensure-daemon) and one that copies the binary.
func BenchmarkPrepare(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(exe)
	b.Logf("binary size %d bytes", fi.Size())
	b.Run("reuse", func(b *testing.B) {
		base := filepath.Join(b.TempDir(), "runtime")
		if _, err := Prepare(context.Background(), base, exe, testVersion); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := Prepare(context.Background(), base, exe, testVersion); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fresh", func(b *testing.B) {
		root := b.TempDir()
		i := 0
		for b.Loop() {
			i++
			if _, err := Prepare(context.Background(), filepath.Join(root, strconv.Itoa(i)), exe, testVersion); err != nil {
				b.Fatal(err)
			}
		}
	})
}
