package snapshot

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// Digest returns the content digest of the snapshot directory dir, in
// lowercase hex: SHA-256 over the concatenation, for every regular file
// below dir except the top-level runtime.json, in ascending byte order of
// its slash-separated path p relative to dir, of
//
//	p || 0x00 || len(content) as 8-byte big-endian || content
//
// Directories contribute only through the paths of the files they hold.
// Symbolic links and other non-regular entries are an error: a snapshot
// never contains them, and following them would hash content outside it.
// The length prefix keeps the encoding unambiguous. For a snapshot, which
// holds only "rollbridge", the digest depends on the binary's bytes alone,
// so every snapshot of one binary lands in the same <base>/<digest>.
func Digest(dir string) (string, error) {
	type entry struct{ rel, full string }
	var files []entry
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, full)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return nil
		case d.Type().IsRegular():
			if rel != ManifestName {
				files = append(files, entry{rel, full})
			}
			return nil
		default:
			return fmt.Errorf("%s is not a regular file or directory (%s)", rel, d.Type())
		}
	})
	if err != nil {
		return "", fmt.Errorf("digest %s: %w", dir, err)
	}
	// WalkDir's per-directory order is not the order of whole paths
	// ("a/b" sorts after "a-c").
	sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
	h := sha256.New()
	for _, f := range files {
		if err := hashFile(h, f.rel, f.full); err != nil {
			return "", fmt.Errorf("digest %s: %w", dir, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileDigest is the Digest of a snapshot holding only path as BinaryName,
// without copying it.
func fileDigest(path string) (string, error) {
	h := sha256.New()
	if err := hashFile(h, BinaryName, path); err != nil {
		return "", fmt.Errorf("digest %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(h hash.Hash, rel, full string) error {
	f, err := os.Open(full)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", rel)
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(fi.Size()))
	h.Write([]byte(rel))
	h.Write([]byte{0})
	h.Write(n[:])
	copied, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	if copied != fi.Size() {
		return fmt.Errorf("%s changed size while being hashed", rel)
	}
	return nil
}
