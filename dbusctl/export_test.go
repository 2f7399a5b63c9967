package dbusctl

// DropConnection closes the live bus connections under the Conn's feet, as
// a dbus-daemon restart would, so tests can exercise the reconnect path.
func (c *Conn) DropConnection() {
	c.mu.Lock()
	g := c.gen
	c.mu.Unlock()
	if g != nil {
		g.raw.Close()
	}
}
