package apply

import (
	"testing"
	"time"
)

// TestLagAgainstTheHead: lag is 0 when the target has applied all the
// log holds, however old its last change, and otherwise the age of the
// oldest change it has not applied — not the time since its last apply.
func TestLagAgainstTheHead(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	hourAgo := now.Add(-time.Hour)
	for _, c := range []struct {
		name   string
		st     workerStatus
		behind int64
		oldest time.Time
		want   float64
	}{
		{"idle for an hour", workerStatus{LastCommit: hourAgo}, 0, time.Time{}, 0},
		{"a change after an hour idle", workerStatus{LastCommit: hourAgo}, 1, now.Add(-2 * time.Second), 2},
		{"the oldest pruned", workerStatus{LastCommit: now.Add(-3 * time.Second)}, 5, time.Time{}, 3},
		{"nothing applied yet", workerStatus{}, 5, now.Add(-time.Second), 1},
		{"clocks apart", workerStatus{}, 5, now.Add(time.Second), 0},
	} {
		if got := lagSeconds(&c.st, c.behind, c.oldest, now); got != c.want {
			t.Errorf("%s: lag %v, want %v", c.name, got, c.want)
		}
	}
}
