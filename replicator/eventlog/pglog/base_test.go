package pglog

import (
	"testing"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestParseKeyString: KeyString's encoding reads back, NULL and empty
// string apart; malformed text is an error, not a panic.
func TestParseKeyString(t *testing.T) {
	for _, key := range [][]eventlog.Value{{}, {nil}, {v("")}, {v("a;b"), nil, v("3:x;")}, {v("ünï")}} {
		got, err := eventlog.ParseKeyString(eventlog.KeyString(key))
		if err != nil || eventlog.KeyString(got) != eventlog.KeyString(key) || len(got) != len(key) {
			t.Errorf("%q: %v, %v", eventlog.KeyString(key), got, err)
		}
	}
	for _, bad := range []string{"3:ab;", "x:a;", "2:ab", "-1:;", "1:ab"} {
		if _, err := eventlog.ParseKeyString(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
