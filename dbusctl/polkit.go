package dbusctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	godbus "github.com/godbus/dbus/v5"
)

// Authorization is polkit's verdict on one action for the calling process.
type Authorization struct {
	// Authorized: the action is granted as is.
	Authorized bool
	// Challenge: granted only after interactive authentication, which a
	// daemon cannot give.
	Challenge bool
}

// CheckAuthorization asks polkit, on the bus at address (the system bus),
// whether this process may perform action, with its own bus name as the
// subject — what systemd itself checks for a caller that is not root — and
// no interaction allowed, so nothing is prompted, started or changed. It
// uses a connection of its own, closed before it returns.
func CheckAuthorization(ctx context.Context, address, action string) (Authorization, error) {
	conn, err := godbus.Dial(address, godbus.WithContext(ctx))
	if err != nil {
		return Authorization{}, fmt.Errorf("dial %s: %w", address, err)
	}
	defer conn.Close()
	if err := conn.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		return Authorization{}, fmt.Errorf("auth on %s: %w", address, err)
	}
	if err := conn.Hello(); err != nil {
		return Authorization{}, fmt.Errorf("hello on %s: %w", address, err)
	}
	names := conn.Names()
	if len(names) == 0 {
		return Authorization{}, errors.New("the bus assigned no unique name")
	}
	subject := struct {
		Kind    string
		Details map[string]godbus.Variant
	}{"system-bus-name", map[string]godbus.Variant{"name": godbus.MakeVariant(names[0])}}
	var result struct {
		Authorized bool
		Challenge  bool
		Details    map[string]string
	}
	obj := conn.Object("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority")
	const noInteraction = uint32(0)
	err = obj.CallWithContext(ctx, "org.freedesktop.PolicyKit1.Authority.CheckAuthorization", 0,
		subject, action, map[string]string{}, noInteraction, "").Store(&result)
	if err != nil {
		return Authorization{}, fmt.Errorf("polkit CheckAuthorization: %w", err)
	}
	return Authorization{Authorized: result.Authorized, Challenge: result.Challenge}, nil
}
