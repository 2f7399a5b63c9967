package cleanup

import (
	"errors"
	"syscall"

	"github.com/rollbridge/rollbridge/statefile"
)

// Process is a live process a previous daemon recorded in its state file.
type Process = statefile.Process

// StateProcesses lists the live processes of the state file at path
// (statefile.LiveProcesses).
func StateProcesses(path string, alive func(pid int) bool) []Process {
	return statefile.LiveProcesses(path, alive)
}

// Kill is the signaller used unless Options.Signal replaces it.
func Kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// aliveWith is signal 0: success or EPERM (exists, other owner) means alive.
func aliveWith(kill func(int, syscall.Signal) error) func(int) bool {
	return func(pid int) bool {
		if pid <= 0 {
			return false
		}
		err := kill(pid, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
}
