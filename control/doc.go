// Package control will hold the daemon's control API on its Unix socket
// (wire types, server and client). It is intentionally empty until the
// daemon issue lands; no command that needs a daemon is registered yet.
package control
