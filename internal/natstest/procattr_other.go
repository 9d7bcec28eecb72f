//go:build !linux

package natstest

import "syscall"

// sysProcAttr: only Linux kills a server process when the test's process
// dies first; elsewhere a crashed test can leave one behind.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
