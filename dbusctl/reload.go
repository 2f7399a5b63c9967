package dbusctl

import (
	"context"
	"fmt"
)

// Reload asks the manager to re-read every unit file (`systemctl
// daemon-reload`): needed after unit files were written or changed, before
// they can be enabled or started. The manager answers when the reload is
// complete. A reload is idempotent, so the retry after a dropped connection
// is harmless.
func (c *Conn) Reload(ctx context.Context) error {
	err := c.do(ctx, func(g *generation) error {
		return g.sd.ReloadContext(ctx)
	})
	if err != nil {
		return fmt.Errorf("dbusctl: daemon-reload of the %s manager: %w", c.tgt.bus, err)
	}
	return nil
}
