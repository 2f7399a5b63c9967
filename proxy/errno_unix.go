package proxy

import (
	"errors"
	"syscall"
)

// isTemporaryErrno reports accept errors worth retrying: a connection that
// died before it was accepted, or a transient resource shortage.
func isTemporaryErrno(err error) bool {
	return errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EMFILE) ||
		errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
