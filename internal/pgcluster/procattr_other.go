//go:build !linux

package pgcluster

import "syscall"

// sysProcAttr runs a server binary as cred, in a process group of its own
// (so a kill reaches its children). Only Linux kills it when this process
// dies first: elsewhere a crashed test can leave a server behind.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true}
}
