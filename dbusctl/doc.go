// Package dbusctl is Rollbridge's only door to systemd's D-Bus API: it is the
// sole importer of github.com/coreos/go-systemd/v22/dbus and
// github.com/godbus/dbus/v5, and speaks plain Go types, never variants.
//
// A Conn talks to one manager — the user manager (systemd --user) on the
// session bus, the system manager on the system bus, or either one's private
// socket — and offers what a process supervisor needs: start a transient
// service and wait for its job (StartTransient), signal it (Kill), stop it
// (Stop), clear a failed unit (ResetFailed), read its state (Properties),
// find units by name pattern (ListUnits) and follow state changes and exits
// from PropertiesChanged signals (Watch).
//
// Every blocking method takes a context. The context given to Dial bounds
// the connect only: go-systemd closes a connection when the context it was
// dialed with ends, so Conn dials with its own long-lived one. When the bus
// drops, the next call re-dials once and retries; a Watch re-subscribes and
// resyncs.
//
// A TransientSpec becomes a unit equivalent to:
//
//	[Unit]
//	Description=rollbridge demo r1 web
//	CollectMode=inactive
//
//	[Service]
//	Type=exec
//	ExecStart=:/bin/sh -c 'exec node server.js --port $PORT'
//	WorkingDirectory=/srv/demo/releases/r1
//	Environment=PORT=3000 ROLLBRIDGE_APPLICATION=demo …
//	KillMode=control-group
//	KillSignal=SIGTERM
//	TimeoutStopSec=30s
//	SendSIGKILL=yes
//	SyslogIdentifier=rollbridge-demo-r1-web
//	LogExtraFields=ROLLBRIDGE_APP=demo
//	Slice=rollbridge-demo.slice
//	StandardOutput=journal
//	StandardError=journal
package dbusctl
