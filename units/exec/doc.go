// Package exec is the plain-process units.Runner: the fallback used where
// no systemd manager answers. Each instance is a child of the daemon,
// started with os/exec in a process group of its own (Setpgid, so its pid
// is the group id), stdin on /dev/null, and stdout/stderr read line by line
// into a bounded in-memory ring per instance (Spec.OutputLines, default
// 50), which is kept across restarts of the same name but not across
// runners.
//
// One goroutine per child waits for it, records its Exit and emits
// EventExited; see broadcaster for the Watch delivery policy (never blocks,
// never drops). Status.PIDs and Status.MemoryBytes (the VmRSS sum) come
// from a /proc scan.
//
// # What Stop reaches
//
// Stop sends the signal to the process group and, individually, to every
// descendant that left the group, waits (polling /proc every 10 ms) until
// none of them is alive (zombies count as gone), SIGKILLs whatever is left
// after the grace window (never with Grace.Indefinite), and waits up to
// units.KillWait more.
//
// Caught:
//   - every process in the instance's process group, whoever its parent
//     is now (also members left behind after the main process exited);
//   - every descendant, at any depth, of the main process or of a group
//     member, even in another group or session (setsid), as long as its
//     chain of parents to the group is intact at one of the scans (at the
//     start of Stop and every 10 ms during it, and at every Signal); once
//     seen, such a process stays tracked by pid and start time, so it is
//     still caught after its parent exits.
//
// Not caught:
//   - a process that left the group and whose parent chain was already
//     broken when the stop began: the classic daemon (fork, setsid, the
//     intermediate exits) is reparented to init or a subreaper before any
//     scan can see its link to the instance, and keeps running;
//   - processes that leave the group and are orphaned within one 10 ms
//     poll interval during a stop (a race, not a guarantee);
//   - anything, if the daemon itself dies: no parent-death signal is set
//     (Go may end the OS thread that forked a child, which would kill it
//     spuriously), so the children outlive a crashed daemon.
//
// Use the systemd runner where these matter: a cgroup holds every
// descendant.
//
// # No re-adoption
//
// List and Status see only instances this Runner started. Children of an
// earlier runner (a previous daemon) are not its children: it could not
// wait for them nor read their output, so it does not pretend to own them.
//
// # Accounts and limits
//
// Spec.User and Spec.Group (names or numeric ids) are honoured through
// SysProcAttr.Credential when the daemon runs as root, and are an error
// otherwise. Spec.MemoryMax is ignored: there is no cgroup to enforce it.
package exec
