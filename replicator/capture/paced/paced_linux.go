//go:build linux

package paced

import (
	"math"
	"syscall"

	"golang.org/x/sys/unix"
)

// queued returns how many bytes a socket holds unread; on an error, as
// many as make a wait end.
func queued(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return math.MaxInt
	}
	return n
}

// setLowWater sets a socket's SO_RCVLOWAT: no wake-up for reading until
// that many bytes are there (a read that does not wait still returns what
// there is).
func setLowWater(sock syscall.RawConn, n int) {
	if sock != nil {
		sock.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n) })
	}
}
