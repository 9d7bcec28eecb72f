//go:build !linux

package proxy

import "errors"

// eventLoop is Linux's (epoll, eventfd): elsewhere every session is
// relayed with goroutines.
type eventLoop struct{}

func newEventLoop() (*eventLoop, error) {
	return nil, errors.New("the event loop needs Linux's epoll")
}

func (l *eventLoop) serve(s *session) fastResult { return fastResult{handback: true} }

func (l *eventLoop) close() {}

func (fc *fastConn) shutdown() {}
