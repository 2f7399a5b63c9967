package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateBootstrap(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	att := "sha256:" + strings.Repeat("ab", 32)
	full := func(mod func(*BootstrapFlags)) BootstrapFlags {
		f := BootstrapFlags{Config: "/etc/rb.js", ReleasePath: dir, ReleaseID: "v1", Revision: "abc",
			ConfigSet: true, PathSet: true, IDSet: true, RevisionSet: true}
		if mod != nil {
			mod(&f)
		}
		return f
	}
	cases := []struct {
		name string
		f    BootstrapFlags
		want string // "" = ok
	}{
		{"plain daemon", BootstrapFlags{Config: "rb.js", ConfigSet: true}, ""},
		{"full tuple", full(nil), ""},
		{"with attestation", full(func(f *BootstrapFlags) { f.Attestation, f.AttestationSet = att, true }), ""},
		{"attestation alone", BootstrapFlags{Attestation: att, AttestationSet: true}, "Daemon --boot-attestation is accepted only with --config, --release-path, --release-id, and --revision."},
		{"missing revision", full(func(f *BootstrapFlags) { f.RevisionSet = false }), "Daemon bootstrap options --config, --release-path, --release-id, and --revision must be provided together."},
		{"missing config", full(func(f *BootstrapFlags) { f.ConfigSet = false }), "Daemon bootstrap options --config, --release-path, --release-id, and --revision must be provided together."},
		{"relative config", full(func(f *BootstrapFlags) { f.Config = "rb.js" }), "Daemon bootstrap --config must be an absolute path."},
		{"traversal config", full(func(f *BootstrapFlags) { f.Config = "/etc/../rb.js" }), "Daemon bootstrap --config must be normalized and must not contain unsafe traversal segments."},
		{"double slash", full(func(f *BootstrapFlags) { f.Config = "/etc//rb.js" }), "Daemon bootstrap --config must be normalized and must not contain unsafe traversal segments."},
		{"trailing slash path", full(func(f *BootstrapFlags) { f.ReleasePath = dir + "/" }), "Daemon bootstrap --release-path must be normalized and must not contain unsafe traversal segments."},
		{"relative path", full(func(f *BootstrapFlags) { f.ReleasePath = "rel/v1" }), "Daemon bootstrap --release-path must be an absolute path."},
		{"bad id", full(func(f *BootstrapFlags) { f.ReleaseID = "-v1" }), "Daemon bootstrap --release-id must be a non-empty safe identifier containing only letters, numbers, dots, underscores, and hyphens."},
		{"bad revision", full(func(f *BootstrapFlags) { f.Revision = "a/b" }), "Daemon bootstrap --revision must be a non-empty safe identifier containing only letters, numbers, dots, underscores, and hyphens."},
		{"long id", full(func(f *BootstrapFlags) { f.ReleaseID = strings.Repeat("a", 201) }), "Daemon bootstrap --release-id must be a non-empty safe identifier"},
		{"bad attestation", full(func(f *BootstrapFlags) { f.Attestation, f.AttestationSet = "sha256:ABC", true }), "Daemon bootstrap --boot-attestation must use the canonical sha256:<64 lowercase hex> format."},
		{"missing release path", full(func(f *BootstrapFlags) { f.ReleasePath = dir + "/nope" }), "Daemon bootstrap --release-path is not accessible: no such file or directory"},
		{"release path is a file", full(func(f *BootstrapFlags) { f.ReleasePath = file }), "Daemon bootstrap --release-path must name a directory."},
		{"takeover without attestation", full(func(f *BootstrapFlags) { f.TakeoverOwner = true }), "Daemon --takeover-owner requires the complete bootstrap release tuple and --boot-attestation."},
		{"takeover without tuple", BootstrapFlags{TakeoverOwner: true, Attestation: att, AttestationSet: true}, "Daemon --takeover-owner requires the complete bootstrap release tuple and --boot-attestation."},
		{"takeover ok", full(func(f *BootstrapFlags) { f.TakeoverOwner, f.Attestation, f.AttestationSet = true, att, true }), ""},
	}
	for _, c := range cases {
		b, err := ValidateBootstrap(c.f)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", c.name, err)
		case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		case c.want == "" && c.f.PathSet && (b == nil || b.ReleaseID != c.f.ReleaseID):
			t.Errorf("%s: bootstrap %+v", c.name, b)
		}
	}
}
