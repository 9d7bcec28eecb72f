package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// ProtocolError is a malformed or oversized message: the connection that
// sent it is closed with a FATAL error; nothing else is affected.
type ProtocolError struct {
	Msg  string
	Code string // the SQLSTATE sent with it; protocol_violation when empty
}

func (e *ProtocolError) Error() string { return e.Msg }

// frameReader reads type-tagged protocol messages from a buffered stream,
// decoding nothing but the 5-byte header.
type frameReader struct {
	r   *bufio.Reader
	max int // largest accepted body, in bytes
	buf []byte
}

func newFrameReader(r io.Reader, size, max int) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, size), max: max}
}

// header reads the next message's type and body length.
func (f *frameReader) header() (byte, int, error) {
	h, err := f.r.Peek(5)
	if err != nil {
		return 0, 0, err
	}
	typ := h[0]
	n := int(int32(binary.BigEndian.Uint32(h[1:5]))) - 4
	if n < 0 {
		return 0, 0, &ProtocolError{Msg: fmt.Sprintf("invalid message length %d for message type %q", n+4, typ)}
	}
	if n > f.max {
		return 0, 0, &ProtocolError{Msg: fmt.Sprintf("message of type %q is %d bytes, more than the %d allowed", typ, n, f.max)}
	}
	return typ, n, nil
}

// body consumes the current message (whose header was just read) and
// returns its body. The slice is valid until the next call.
func (f *frameReader) body(n int) ([]byte, error) {
	if n+5 <= f.r.Size() {
		b, err := f.r.Peek(n + 5)
		if err != nil {
			return nil, err
		}
		f.buf = append(f.buf[:0], b[5:]...)
		_, err = f.r.Discard(n + 5)
		return f.buf, err
	}
	if _, err := f.r.Discard(5); err != nil {
		return nil, err
	}
	// Grow with what actually arrives, so a lying length costs nothing.
	f.buf = f.buf[:0]
	for len(f.buf) < n {
		chunk := min(n-len(f.buf), 1<<20)
		start := len(f.buf)
		f.buf = append(f.buf, make([]byte, chunk)...)
		if _, err := io.ReadFull(f.r, f.buf[start:]); err != nil {
			return nil, err
		}
	}
	if cap(f.buf) > 1<<20 {
		b := f.buf
		f.buf = nil
		return b, nil
	}
	return f.buf, nil
}

// copyTo relays the current message, header included, to w.
func (f *frameReader) copyTo(w *bufio.Writer, n int) error {
	if n+5 <= f.r.Size() {
		b, err := f.r.Peek(n + 5)
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		_, err = f.r.Discard(n + 5)
		return err
	}
	_, err := io.CopyN(w, f.r, int64(n+5))
	return err
}

// skip discards the current message.
// ownedBody consumes the current message and returns its body in a slice
// of its own, read straight into (used for the upstream's replies, whose
// lengths are the server's).
func (f *frameReader) ownedBody(n int) ([]byte, error) {
	if _, err := f.r.Discard(5); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	_, err := io.ReadFull(f.r, b)
	return b, err
}

func (f *frameReader) skip(n int) error {
	_, err := f.r.Discard(n + 5)
	return err
}

// appendMessage frames a body with its type and length.
func appendMessage(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)+4))
	return append(dst, body...)
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}
