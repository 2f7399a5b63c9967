package account

import (
	"os"
	"strings"
	"testing"
)

// TestCredentialErrors: the messages name the process's user/group setting
// and the fix (the runner prefixes the unit name; release the process).
func TestCredentialErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		_, err := Credential("nobody", "")
		if err == nil || !strings.Contains(err.Error(), `user "nobody": only a daemon running as root can switch accounts`) {
			t.Errorf("non-root: %v", err)
		}
		t.Skip("not root: only the refusal was tested")
	}
	cases := []struct{ user, group, want string }{
		{"no-such-user-rbt", "", `user "no-such-user-rbt": no such account on this machine; create it or fix user/group of the process`},
		{"", "no-such-group-rbt", `group "no-such-group-rbt": no such account on this machine`},
	}
	for _, c := range cases {
		if _, err := Credential(c.user, c.group); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Credential(%q, %q) = %v, want %q", c.user, c.group, err, c.want)
		}
	}
	cred, err := Credential("nobody", "")
	if err != nil || cred.Uid != 65534 {
		t.Errorf("Credential(nobody) = %+v, %v", cred, err)
	}
}
