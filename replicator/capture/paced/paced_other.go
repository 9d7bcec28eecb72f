//go:build !linux

package paced

import (
	"math"
	"syscall"
)

// queued is as many bytes as make a wait end: only Linux says how many a
// socket holds.
func queued(fd uintptr) int { return math.MaxInt }

// setLowWater does nothing: the low-water mark is raised on Linux only.
func setLowWater(sock syscall.RawConn, n int) {}
