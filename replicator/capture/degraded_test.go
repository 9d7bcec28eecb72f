package capture

import (
	"strings"
	"testing"
	"time"
)

// TestSlotWatch: a slot counts as stalled only when its confirmed
// position has not moved for longer than the threshold while WAL is
// pending; a confirmation, no pending WAL or no slot clears it.
func TestSlotWatch(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	stall := time.Minute
	type step struct {
		at        time.Duration
		confirmed string
		pending   int64
		stalled   bool // at this step, after the check
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"confirming", []step{{0, "0/1", 10, false}, {50 * time.Second, "0/2", 10, false}, {100 * time.Second, "0/3", 10, false}}},
		{"stuck with WAL pending", []step{{0, "0/1", 10, false}, {30 * time.Second, "0/1", 20, false}, {61 * time.Second, "0/1", 30, true}}},
		{"stuck with nothing pending", []step{{0, "0/1", 0, false}, {2 * time.Minute, "0/1", 0, false}}},
		{"WAL arrives after an idle spell", []step{{0, "0/1", 0, false}, {2 * time.Minute, "0/1", 10, false}, {3*time.Minute + time.Second, "0/1", 10, true}}},
		{"confirms again", []step{{0, "0/1", 10, false}, {2 * time.Minute, "0/1", 10, true}, {2*time.Minute + time.Second, "0/2", 10, false}}},
		{"slot gone", []step{{0, "0/1", 10, false}, {2 * time.Minute, "", 0, false}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var w slotWatch
			for i, s := range c.steps {
				now := t0.Add(s.at)
				w.saw("rejot_shop", s.confirmed, s.pending, now)
				got := w.stalled(now, stall)
				if (got != "") != s.stalled {
					t.Fatalf("step %d: stalled = %q, want %v", i, got, s.stalled)
				}
				if got != "" && !strings.Contains(got, "rejot_shop") {
					t.Fatalf("step %d: %q does not name the slot", i, got)
				}
			}
		})
	}
}
