package proxy

import (
	"encoding/binary"
	"testing"
)

// TestStartupFailure: a refused startup packet gets Postgres's SQLSTATE and
// message, the message without the SQLSTATE that Error() appends.
func TestStartupFailure(t *testing.T) {
	packet := func(version uint32, params string) []byte {
		b := binary.BigEndian.AppendUint32(make([]byte, 4), version)
		b = append(b, params...)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		return b
	}
	tests := []struct {
		name      string
		packet    []byte
		code, msg string
	}{
		{"protocol 2", packet(2<<16, "user\x00u\x00\x00"), "0A000", "unsupported frontend protocol 2.0: server supports 3.0 to 3.2"},
		{"no user", packet(3<<16, "database\x00d\x00\x00"), "28000", "no PostgreSQL user name specified in startup packet"},
		{"no terminator", packet(3<<16, "user\x00u\x00"), "08P01", "invalid startup packet layout: expected terminator as last byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseStartup(tt.packet)
			if err == nil {
				t.Fatal("accepted")
			}
			if code, msg := startupFailure(err); code != tt.code || msg != tt.msg {
				t.Errorf("got %s %q, want %s %q", code, msg, tt.code, tt.msg)
			}
		})
	}
}
