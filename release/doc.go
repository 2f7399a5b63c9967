// Package release will hold Rollbridge's release orchestration: the deploy,
// rollback, stop and restart flows of spec §3 and the per-application
// release state machine, driving processes through units.Runner and traffic
// through the proxy. It is intentionally empty until the daemon issue lands;
// no command that needs it is registered in the CLI yet.
package release
