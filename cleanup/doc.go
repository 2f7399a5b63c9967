// Package cleanup implements the two commands that clean a host up without
// a daemon: `recover` (stop what a crashed daemon left behind, spec §8.3)
// and `predeploy-cleanup` (make way for a deploy: stop an outdated daemon,
// its leftovers and the processes of a legacy supervisor, spec §8.4).
//
// Leftovers are of two kinds. With a reachable systemd manager, every live
// transient unit of the application (rollbridge-<app>-*.service) is one: no
// daemon runs, so nobody supervises it. (Starting a daemon instead would
// re-adopt the units its config defines; recover is the explicit clean
// slate.) With statePath set, every live process recorded in the state file
// (spec §8.2) that is not inside one of those units is one too: the
// children of an exec-runner daemon.
//
// Units are stopped by systemd (the whole cgroup); processes by signals to
// their process group. The package prints nothing: the CLI renders the
// reports with the spec's texts.
package cleanup
