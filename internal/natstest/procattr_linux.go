package natstest

import "syscall"

// sysProcAttr: a server process is killed if the test's process dies
// first (a test that times out or panics leaves no server behind).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
