package units

import (
	"syscall"
	"testing"
)

func TestUnitNameRoundTrip(t *testing.T) {
	cases := []struct {
		id   Identity
		want string
	}{
		{Identity{App: "hello", Release: "v1", Process: "web", Replicas: 1}, "rollbridge-hello-v1-web.service"},
		{Identity{App: "shop-front", Release: "2026.1", Process: "background-jobs-worker", Replica: 2, Replicas: 3},
			`rollbridge-shop\x2dfront-2026.1-background\x2djobs\x2dworker\x232.service`},
		{Identity{App: "a b", Release: ".hidden", Process: "x/y", Replicas: 1}, `rollbridge-a\x20b-\x2ehidden-x\x2fy.service`},
		{Identity{App: "shop", Release: "v1", Process: "web", Replica: 2, Replicas: 4, Generation: 1}, `rollbridge-shop-v1-web\x232\x23g1.service`},
		{Identity{App: "shop", Release: "v1", Process: "web", Replicas: 1, Generation: 12}, `rollbridge-shop-v1-web\x23g12.service`},
	}
	for _, c := range cases {
		got := c.id.UnitName()
		if got != c.want {
			t.Errorf("UnitName(%+v) = %q, want %q", c.id, got, c.want)
		}
		app, rel, inst, ok := ParseUnitName(got)
		if !ok || app != c.id.App || rel != c.id.Release || inst != c.id.InstanceID() {
			t.Errorf("ParseUnitName(%q) = %q %q %q %v", got, app, rel, inst, ok)
		}
		if _, _, _, gen, ok := ParseUnitNameGeneration(got); !ok || gen != c.id.Generation {
			t.Errorf("ParseUnitNameGeneration(%q) = generation %d %v, want %d", got, gen, ok, c.id.Generation)
		}
	}
}

func TestParseUnitNameRejectsForeign(t *testing.T) {
	for _, n := range []string{"sshd.service", "rollbridge-a-b.service", `rollbridge-a-b-c\x2.service`, "rollbridge-a-b-c.socket", `rollbridge-a-b-c\d.service`,
		`rollbridge-a-b-web\x23gx.service`, `rollbridge-a-b-web\x23g0.service`, `rollbridge-a-b-web\x23g01.service`} {
		if _, _, _, ok := ParseUnitName(n); ok {
			t.Errorf("ParseUnitName(%q) accepted a foreign name", n)
		}
	}
}

func TestIdentityEnvRoundTrip(t *testing.T) {
	id := Identity{App: "shop", Release: "v9", Process: "worker", Replica: 1, Replicas: 4, Generation: 3}
	env := WithIdentityEnv([]string{"ROLLBRIDGE_PROCESS_ID=override", "A=b"}, id)
	got, ok := IdentityFromEnv(env)
	if !ok {
		t.Fatal("identity not found in env")
	}
	if got.Process != "override" {
		t.Errorf("user-set ROLLBRIDGE_PROCESS_ID must win, got %q", got.Process)
	}
	got.Process = id.Process
	if got != id {
		t.Errorf("got %+v want %+v", got, id)
	}
}

func TestSlicesAndPatterns(t *testing.T) {
	if got := AppSlice("shop-front"); got != `rollbridge-shop\x2dfront.slice` {
		t.Errorf("AppSlice = %q", got)
	}
	if got := AppUnitPattern("shop-front"); got != `rollbridge-shop\x2dfront-*.service` {
		t.Errorf("AppUnitPattern = %q", got)
	}
}

func TestSignals(t *testing.T) {
	if s, ok := ParseSignal("SIGINT"); !ok || s != syscall.SIGINT {
		t.Errorf("ParseSignal(SIGINT) = %v %v", s, ok)
	}
	if _, ok := ParseSignal("SIGNOPE"); ok {
		t.Error("unknown signal accepted")
	}
	if n := SignalName(syscall.SIGABRT); n != "SIGABRT" {
		t.Errorf("SignalName(SIGABRT) = %q", n)
	}
	if n := SignalName(syscall.SIGIO); n != "SIGIO" {
		t.Errorf("SignalName(SIGIO) = %q", n)
	}
	if n := SignalName(syscall.Signal(99)); n != "SIG99" {
		t.Errorf("SignalName(99) = %q", n)
	}
}
