package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestControlAuthorization drives a root daemon from a second uid: denied
// by peer credentials until the user joins control.group.
func TestControlAuthorization(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root to create a test user (the CI run is root)")
	}
	suffix := strconv.Itoa(rand.IntN(1_000_000))
	userName, groupName := "rbu"+suffix, "rbg"+suffix
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("groupadd", groupName)
	t.Cleanup(func() { exec.Command("groupdel", groupName).Run() })
	run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", userName)
	t.Cleanup(func() { exec.Command("userdel", userName).Run() })
	u, err := user.Lookup(userName)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	e := newEnv(t, "exec", fmt.Sprintf(`[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}}],
  control: {path: %q, mode: "666", group: %q}`, "/tmp/rbe-auth"+suffix+".sock", groupName))
	// newEnv already wrote control.path; the second control key wins in JS.
	os.Chmod(e.dir, 0o755)
	os.Chmod(e.config, 0o644)
	os.Chmod(binDir, 0o755)
	asUser := func(groups ...uint32) (string, error) {
		cmd := exec.Command(rbBinary, "status", "--json", "-c", e.config)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asUser()
	if err == nil || !strings.Contains(out, fmt.Sprintf("permission denied: uid %d may not control this daemon", uid)) || !strings.Contains(out, groupName) {
		t.Fatalf("outsider was not denied: err %v\n%s", err, out)
	}
	run("usermod", "-aG", groupName, userName)
	g, err := user.LookupGroup(groupName)
	if err != nil {
		t.Fatal(err)
	}
	ggid, _ := strconv.Atoi(g.Gid)
	out, err = asUser(uint32(ggid))
	if err != nil || !strings.Contains(out, `"status": "success"`) {
		t.Fatalf("member of %s was refused: %v\n%s", groupName, err, out)
	}
	fi, _ := os.Stat("/tmp/rbe-auth" + suffix + ".sock")
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Gid) != ggid || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket ownership/mode: %v gid %v", fi.Mode(), fi.Sys())
	}
}
