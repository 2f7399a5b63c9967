package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// checkBase verifies every component of the clean absolute path base, from
// / down: each is a real directory (Lstat, so a symlink anywhere is
// refused, not followed); every ancestor is owned by root or uid and is not
// group/other-writable unless sticky (like /tmp, where others can create but
// not rename or delete our entries); the leaf is owned by uid and never
// group/other-writable. Otherwise someone else could swap the snapshot a
// daemon is about to execute.
func checkBase(base string, uid int) error {
	components := []string{"/"}
	cur := "/"
	for _, name := range strings.Split(strings.TrimPrefix(base, "/"), "/") {
		if name == "" {
			continue
		}
		cur = filepath.Join(cur, name)
		components = append(components, cur)
	}
	for i, p := range components {
		if err := checkComponent(base, p, uid, i == len(components)-1); err != nil {
			return err
		}
	}
	return nil
}

func checkComponent(base, p string, uid int, leaf bool) error {
	unsafe := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s; point --daemon-runtime-path at a private directory", ErrUnsafePath, base, fmt.Sprintf(format, args...))
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("check daemon runtime path %s: %w", base, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return unsafe("%s is a symbolic link", p)
	}
	if !fi.IsDir() {
		return unsafe("%s is not a directory", p)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return unsafe("cannot read the owner of %s", p)
	}
	owner := int(st.Uid)
	shared := fi.Mode().Perm()&0o022 != 0
	if leaf {
		if owner != uid {
			return unsafe("%s is owned by uid %d, not the current user (uid %d)", p, owner, uid)
		}
		if shared {
			return unsafe("%s is group- or other-writable (mode %04o)", p, fi.Mode().Perm())
		}
		return nil
	}
	if owner != 0 && owner != uid {
		return unsafe("%s is owned by uid %d, neither root nor the current user (uid %d)", p, owner, uid)
	}
	if shared && fi.Mode()&os.ModeSticky == 0 {
		return unsafe("%s is group- or other-writable without the sticky bit (mode %04o)", p, fi.Mode().Perm())
	}
	return nil
}
