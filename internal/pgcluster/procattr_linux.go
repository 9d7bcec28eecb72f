package pgcluster

import "syscall"

// sysProcAttr runs a server binary as cred, in a process group of its own
// (so a kill reaches its children), killed if this process dies first.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
