// Package snapshot prepares and verifies the daemon runtime snapshot of
// spec §8.5: an immutable, content-addressed copy of the running rollbridge
// binary that a daemon is started from, so the daemon survives deletion or
// replacement of the release directory that launched it, and so a later
// ensure-daemon can tell whether a running daemon runs the same code.
//
// Layout under a private base directory:
//
//	<base>/<digest>/rollbridge     copy of the binary, mode 0755
//	<base>/<digest>/runtime.json   {"digest","format","path","version"}, mode 0600
//
// The package uses the standard library only and never logs.
package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Format is the manifest format written to and required in runtime.json.
const Format = 1

// ManifestEnv names the runtime.json of the snapshot a daemon was started
// from. ensure-daemon sets it; a daemon that finds it calls Verify.
const ManifestEnv = "ROLLBRIDGE_DAEMON_RUNTIME_MANIFEST"

const (
	// BinaryName is the file name of the binary inside a snapshot.
	BinaryName = "rollbridge"
	// ManifestName is the file name of the manifest inside a snapshot. It
	// is excluded from the digest (it contains the digest).
	ManifestName = "runtime.json"

	stagingPrefix = ".prepare-"
	// helpTimeout bounds the `rollbridge --help` smoke test (spec §8.5).
	helpTimeout = 10 * time.Second
	// staleStaging is the age after which a staging directory can only
	// be the leftover of a preparer that died (a live one needs seconds).
	staleStaging = 10 * time.Minute
	// maxManifest bounds how much of runtime.json is read.
	maxManifest = 64 << 10
)

// ErrMismatch is ensure-daemon's refusal when the answering daemon's
// runtime identity is missing or differs from the prepared one (spec §8.5).
var ErrMismatch = errors.New("The running Rollbridge daemon has a legacy or mismatched runtime. The deploy was not sent. Keep the current release active, then explicitly stop and restart the daemon with this Rollbridge installation before retrying.")

// ErrUnsafePath marks a runtime base directory that fails the ownership and
// permission checks; every such error wraps it.
var ErrUnsafePath = errors.New("unsafe Rollbridge daemon runtime path")

// Identity is a runtime identity: the content of runtime.json and what a
// daemon reports as status.daemonRuntime.
type Identity struct {
	Digest  string `json:"digest"`
	Format  int    `json:"format"`
	Path    string `json:"path"` // the snapshot directory <base>/<digest>
	Version string `json:"version"`
}

// ValidationError is returned when a snapshot directory does not validate.
// Its text is the spec's fail-closed message.
type ValidationError struct {
	Path   string // the snapshot (or staging) directory
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("Rollbridge daemon runtime validation failed at %s: %s", e.Path, e.Reason)
}

// DefaultBase is the default --daemon-runtime-path:
// /tmp/rollbridge-<uid>-<first 16 hex chars of sha256(application)>-runtime.
func DefaultBase(uid int, application string) string {
	sum := sha256.Sum256([]byte(application))
	return "/tmp/rollbridge-" + strconv.Itoa(uid) + "-" + hex.EncodeToString(sum[:])[:16] + "-runtime"
}

// Compatible reports whether a running daemon's reported identity equals the
// prepared one in format, version and digest. A missing identity (a legacy
// daemon) is never compatible.
func Compatible(running *Identity, prepared Identity) bool {
	return running != nil && running.Digest != "" &&
		running.Format == prepared.Format &&
		running.Version == prepared.Version &&
		running.Digest == prepared.Digest
}

// Describe returns the identity of a daemon started directly from exe
// (without a manifest): the digest is computed exactly as for a snapshot
// holding exe as BinaryName, so a snapshot of the same binary compares
// Compatible; Path is exe itself.
func Describe(exe, version string) (Identity, error) {
	d, err := fileDigest(exe)
	if err != nil {
		return Identity{}, fmt.Errorf("describe daemon runtime: %w", err)
	}
	return Identity{Digest: d, Format: Format, Path: exe, Version: version}, nil
}

// Prepare snapshots exe (normally os.Executable()) into base and returns the
// validated identity. It creates base (0700) if missing and refuses it
// unless every path component from / is a real directory owned by root or
// the current user and not group/other-writable unless sticky, with the
// leaf owned by the current user and never group/other-writable.
//
// The binary is copied into a fresh <base>/.prepare-* staging directory,
// runtime.json is written, the staging copy is validated and then renamed
// atomically to <base>/<digest>. If that directory already exists (another
// preparer won, or an earlier run), the existing one is validated instead
// and the staging copy discarded; a corrupt existing snapshot fails closed
// with a *ValidationError. Concurrent calls, in one or several processes,
// converge on one snapshot and leave no staging directories behind.
//
// Validation: runtime.json is a regular file whose format, version, path
// (the snapshot directory) and digest match; the digest recomputed from the
// directory (see Digest) matches; and `<dir>/rollbridge --help`, run with
// ManifestEnv=<dir>/runtime.json and a 10 s timeout, exits 0.
func Prepare(ctx context.Context, base, exe, version string) (Identity, error) {
	return preparer{helpTimeout: helpTimeout}.prepare(ctx, base, exe, version)
}

// preparer carries what tests change; Prepare uses the spec's values.
type preparer struct {
	helpTimeout time.Duration
	// alwaysStage skips the fast path so tests can make the rename meet
	// an existing snapshot deterministically.
	alwaysStage bool
}

func (p preparer) prepare(ctx context.Context, base, exe, version string) (Identity, error) {
	if !filepath.IsAbs(base) {
		return Identity{}, fmt.Errorf("%w %q: it must be absolute; fix --daemon-runtime-path", ErrUnsafePath, base)
	}
	base = filepath.Clean(base)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return Identity{}, fmt.Errorf("create daemon runtime directory %s: %w", base, err)
	}
	if err := checkBase(base, os.Geteuid()); err != nil {
		return Identity{}, err
	}

	pruneStaging(base, time.Now().Add(-staleStaging))

	// Fast path: a snapshot of this exact binary usually exists already
	// (every deploy --ensure-daemon prepares one), so skip the copy and
	// just validate it.
	want, err := fileDigest(exe)
	if err != nil {
		return Identity{}, fmt.Errorf("prepare daemon runtime: %w", err)
	}
	final := filepath.Join(base, want)
	if _, err := os.Lstat(final); err == nil && !p.alwaysStage {
		return p.validate(ctx, final, final, version)
	}

	staging, err := os.MkdirTemp(base, stagingPrefix)
	if err != nil {
		return Identity{}, fmt.Errorf("create daemon runtime staging directory in %s: %w", base, err)
	}
	// After a successful rename staging no longer exists; in every other
	// case this discards the staging copy.
	defer os.RemoveAll(staging)

	digest, err := stage(staging, exe)
	if err != nil {
		return Identity{}, fmt.Errorf("prepare daemon runtime in %s: %w", staging, err)
	}
	// exe may have been replaced since it was hashed; the staging copy is
	// what counts.
	final = filepath.Join(base, digest)
	id := Identity{Digest: digest, Format: Format, Path: final, Version: version}
	if err := writeManifest(filepath.Join(staging, ManifestName), id); err != nil {
		return Identity{}, fmt.Errorf("prepare daemon runtime in %s: %w", staging, err)
	}
	if _, err := p.validate(ctx, staging, final, version); err != nil {
		return Identity{}, err
	}
	if err := os.Rename(staging, final); err != nil {
		// rename(2) refuses to replace a non-empty directory (ENOTEMPTY or
		// EEXIST) and a non-directory (ENOTDIR); either way something is
		// at final, and that is what must validate.
		if _, serr := os.Lstat(final); serr != nil {
			return Identity{}, fmt.Errorf("move daemon runtime snapshot to %s: %w", final, err)
		}
		return p.validate(ctx, final, final, version)
	}
	syncDir(base)
	return id, nil
}

// stage copies exe into staging as BinaryName (0755) and returns the digest
// of the staging directory.
func stage(staging, exe string) (string, error) {
	src, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("open rollbridge binary: %w", err)
	}
	defer src.Close()
	if fi, err := src.Stat(); err != nil {
		return "", fmt.Errorf("stat rollbridge binary: %w", err)
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("rollbridge binary %s is not a regular file", exe)
	}
	dstPath := filepath.Join(staging, BinaryName)
	if err := copyExecutable(dstPath, src); err != nil {
		return "", err
	}
	return Digest(staging)
}

// copyExecutable writes src to a new dstPath (0755). It holds ForkLock
// for reading while the write descriptor is open: a fork by another
// goroutine would otherwise inherit it until its exec, and running the copy
// meanwhile fails with ETXTBSY (golang/go#22315).
func copyExecutable(dstPath string, src io.Reader) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	dst, err := os.OpenFile(dstPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return fmt.Errorf("create %s: %w", dstPath, err)
	}
	_, err = io.Copy(dst, src)
	// The umask must not decide the mode; Sync makes the rename publish
	// complete content even across a crash.
	if err == nil {
		err = dst.Chmod(0o755)
	}
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy rollbridge binary to %s: %w", dstPath, err)
	}
	return nil
}

func writeManifest(path string, id Identity) error {
	data, err := json.Marshal(id)
	if err != nil {
		return fmt.Errorf("encode %s: %w", ManifestName, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, werr := f.Write(append(data, '\n'))
	if werr == nil {
		werr = f.Chmod(0o600)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}

// readManifest reads and strictly decodes a runtime.json; the error text is
// a validation reason.
func readManifest(path string) (Identity, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return Identity{}, fmt.Errorf("cannot read %s: %w", ManifestName, err)
	}
	if !fi.Mode().IsRegular() {
		return Identity{}, fmt.Errorf("%s is not a regular file", ManifestName)
	}
	if fi.Size() > maxManifest {
		return Identity{}, fmt.Errorf("%s is larger than %d bytes", ManifestName, maxManifest)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("cannot read %s: %w", ManifestName, err)
	}
	var id Identity
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&id); err != nil {
		return Identity{}, fmt.Errorf("%s is not a valid manifest: %w", ManifestName, err)
	}
	if dec.More() {
		return Identity{}, fmt.Errorf("%s has trailing data", ManifestName)
	}
	return id, nil
}

// Verify is what a daemon started with ManifestEnv does before it reports
// its runtime: manifestPath must be an absolute path to a runtime.json of
// format Format whose path is the manifest's own directory, exe (the running
// executable, os.Executable()) must be <dir>/rollbridge, and the digest
// recomputed from the directory must match both the manifest and the
// directory name. It returns the identity to report in
// status.daemonRuntime. Errors are *ValidationError.
func Verify(manifestPath, exe string) (Identity, error) {
	if !filepath.IsAbs(manifestPath) {
		return Identity{}, &ValidationError{Path: manifestPath, Reason: ManifestEnv + " must be an absolute path"}
	}
	manifestPath = filepath.Clean(manifestPath)
	dir := filepath.Dir(manifestPath)
	fail := func(format string, args ...any) (Identity, error) {
		return Identity{}, &ValidationError{Path: dir, Reason: fmt.Sprintf(format, args...)}
	}
	if filepath.Base(manifestPath) != ManifestName {
		return fail("%s must name a %s, not %q", ManifestEnv, ManifestName, filepath.Base(manifestPath))
	}
	id, err := readManifest(manifestPath)
	if err != nil {
		return fail("%v", err)
	}
	if id.Format != Format {
		return fail("manifest format %d is not %d", id.Format, Format)
	}
	if id.Path != dir {
		return fail("manifest path %q is not the manifest's directory", id.Path)
	}
	if !sameExecutable(exe, filepath.Join(dir, BinaryName)) {
		return fail("the running executable %s is not %s", exe, filepath.Join(dir, BinaryName))
	}
	got, err := Digest(dir)
	if err != nil {
		return fail("%v", err)
	}
	if got != id.Digest {
		return fail("content digest %s does not match manifest digest %s", got, id.Digest)
	}
	if filepath.Base(dir) != got {
		return fail("directory name is not the content digest %s", got)
	}
	return id, nil
}

// sameExecutable accepts the snapshot binary by path, or by inode when the
// two paths differ only in spelling (os.Executable resolves symlinks).
func sameExecutable(exe, want string) bool {
	if filepath.Clean(exe) == want {
		return true
	}
	a, err := os.Stat(exe)
	if err != nil {
		return false
	}
	b, err := os.Stat(want)
	return err == nil && os.SameFile(a, b)
}

// pruneStaging removes staging directories last modified before cutoff,
// left behind by a preparer that was killed. Best effort: a failure here
// must not block the deploy.
func pruneStaging(base string, cutoff time.Time) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), stagingPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			_ = os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
}

func syncDir(dir string) {
	// Best effort: durability of the rename, not correctness.
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}
