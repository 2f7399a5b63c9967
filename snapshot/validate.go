package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// validate checks the snapshot directory dir, whose manifest must name want
// as its path (dir itself, or the final directory when dir is the staging
// copy), and returns the manifest's identity.
func (p preparer) validate(ctx context.Context, dir, want, version string) (Identity, error) {
	fail := func(format string, args ...any) (Identity, error) {
		return Identity{}, &ValidationError{Path: dir, Reason: fmt.Sprintf(format, args...)}
	}
	if err := checkPrivate(dir, false); err != nil {
		return fail("%v", err)
	}
	bin := filepath.Join(dir, BinaryName)
	if err := checkPrivate(bin, true); err != nil {
		return fail("%v", err)
	}
	id, err := readManifest(filepath.Join(dir, ManifestName))
	if err != nil {
		return fail("%v", err)
	}
	switch {
	case id.Format != Format:
		return fail("manifest format %d is not %d", id.Format, Format)
	case id.Version != version:
		return fail("manifest version %q is not %q", id.Version, version)
	case id.Path != want:
		return fail("manifest path %q is not %q", id.Path, want)
	}
	got, err := Digest(dir)
	if err != nil {
		return fail("%v", err)
	}
	if got != id.Digest {
		return fail("content digest %s does not match manifest digest %s", got, id.Digest)
	}
	if filepath.Base(want) != got {
		return fail("directory name is not the content digest %s", got)
	}
	if err := p.runHelp(ctx, dir, bin); err != nil {
		return fail("%v", err)
	}
	return id, nil
}

// checkPrivate requires a real directory (or, with file, a regular
// executable file) owned by the current user and not group/other-writable.
func checkPrivate(p string, file bool) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	name := filepath.Base(p)
	switch {
	case file && !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file (%s)", name, fi.Mode().Type())
	case file && fi.Mode().Perm()&0o100 == 0:
		return fmt.Errorf("%s is not executable (mode %04o)", name, fi.Mode().Perm())
	case !file && fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link", name)
	case !file && !fi.IsDir():
		return fmt.Errorf("%s is not a directory", name)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is group- or other-writable (mode %04o)", name, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is not owned by the current user", name)
	}
	return nil
}

// runHelp smoke-tests the copied binary: `<bin> --help` with the manifest
// in the environment must exit 0 within the timeout.
func (p preparer) runHelp(ctx context.Context, dir, bin string) error {
	ctx, cancel := context.WithTimeout(ctx, p.helpTimeout)
	defer cancel()
	var out tailBuffer
	cmd := exec.CommandContext(ctx, bin, "--help")
	cmd.Dir = dir
	cmd.Env = withEnv(os.Environ(), ManifestEnv, filepath.Join(dir, ManifestName))
	cmd.Stdout, cmd.Stderr = &out, &out
	// A grandchild holding the pipe must not stall the timeout.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s --help did not finish within %s", BinaryName, p.helpTimeout)
	case ctx.Err() != nil:
		return fmt.Errorf("%s --help: %w", BinaryName, ctx.Err())
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		return fmt.Errorf("%s --help failed: %w: %s", BinaryName, err, s)
	}
	return fmt.Errorf("%s --help failed: %w", BinaryName, err)
}

// withEnv returns env with key set to value (replacing any earlier value).
func withEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// tailBuffer keeps the last bytes written, for error messages.
type tailBuffer struct{ b bytes.Buffer }

const tailMax = 2048

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.b.Write(p)
	if t.b.Len() > tailMax {
		rest := t.b.Bytes()[t.b.Len()-tailMax:]
		kept := append([]byte(nil), rest...)
		t.b.Reset()
		t.b.Write(kept)
	}
	return n, nil
}

func (t *tailBuffer) String() string { return t.b.String() }
