package proxy

import (
	"encoding/binary"
	"errors"
)

// errConcurrentAuth: the authentication exchange cannot be relayed one
// message at a time (GSSAPI continuation, where the server may or may not
// expect an answer), so both directions must be relayed freely.
var errConcurrentAuth = errors.New("authentication needs both directions at once")

// errAuthFailed ends a session whose upstream refused the client.
var errAuthFailed = errors.New("upstream refused the client")

// authenticate relays the startup exchange until the upstream's first
// ReadyForQuery: upstream messages go to the client, and each request for
// credentials is answered by exactly one client message. Doing it in one
// goroutine leaves the session at a clean point afterwards, from which the
// event loop can take it over.
func (s *session) authenticate() error {
	for {
		if s.ur.r.Buffered() < 5 {
			if err := s.cw.Flush(); err != nil {
				return err
			}
		}
		typ, n, err := s.ur.header()
		if err != nil {
			return err
		}
		switch typ {
		case 'R':
			code, err := s.authCode(n)
			if err != nil {
				return err
			}
			if code == 8 {
				return errConcurrentAuth
			}
			if err := s.relayAuthRequest(code, n); err != nil {
				return err
			}
		case 'K':
			if err := s.relayObserved(typ, n); err != nil {
				return err
			}
		case 'Z':
			if err := s.relayObserved(typ, n); err != nil {
				return err
			}
			return s.cw.Flush()
		case 'E':
			s.ur.copyTo(s.cw, n)
			s.cw.Flush()
			return errAuthFailed
		default:
			if err := s.ur.copyTo(s.cw, n); err != nil {
				return err
			}
		}
	}
}

func (s *session) authCode(n int) (uint32, error) {
	if n < 4 {
		return 0, &ProtocolError{Msg: "invalid authentication request from the upstream"}
	}
	b, err := s.ur.r.Peek(9)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[5:9]), nil
}

// relayAuthRequest relays an authentication request and, when it asks for
// credentials, the client's one answer.
func (s *session) relayAuthRequest(code uint32, n int) error {
	var err error
	if code == 10 {
		err = s.relaySASLMechanisms(n)
	} else {
		err = s.ur.copyTo(s.cw, n)
	}
	if err != nil {
		return err
	}
	switch code {
	case 3, 5, 7, 9, 10, 11: // cleartext, md5, GSS, SSPI, SASL, SASL continue
	default:
		return nil
	}
	if err := s.cw.Flush(); err != nil {
		return err
	}
	typ, cn, err := s.cr.header()
	if err != nil {
		return err
	}
	if err := s.forward(typ, cn); err != nil {
		return err
	}
	return s.uw.Flush()
}

// relayObserved relays a message whose content the session tracks.
func (s *session) relayObserved(typ byte, n int) error {
	b, err := s.ur.r.Peek(5 + min(n, 256))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.observe(typ, b[5:])
	s.mu.Unlock()
	return s.ur.copyTo(s.cw, n)
}
