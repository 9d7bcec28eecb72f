package natslog

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestCopyReadsEveryKey: fetches of the state's keys that time out before
// a message came (a busy server) do not end the copy's read of them: a
// copy that stopped there would write the first state's rows of the keys
// it did not read. Every other fetch here waits a millisecond.
func TestCopyReadsEveryKey(t *testing.T) {
	const rows = 20_000
	c := natstest.Run(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open := opener(t, c)
	l := open()
	v := eventlog.Version{Publication: "accounts", Number: 1}
	layout := eventlog.Layout{Columns: 2, Key: []int{0}}
	val := func(s string) eventlog.Value { return &s }
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: 1, Layout: layout, Changes: []eventlog.Change{{Op: eventlog.OpTruncate}}}
	for i := range rows {
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Row: []eventlog.Value{val(fmt.Sprint(i)), val("old")}})
	}
	if err := tx.Fill(ctx, g); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var groups []eventlog.Group
	for i := range rows {
		groups = append(groups, eventlog.Group{Version: v, System: "shop", CommitLSN: uint64(2 + i), Layout: layout,
			Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Row: []eventlog.Value{val(fmt.Sprint(i)), val("new")}}}})
	}
	if _, err := eventlog.Append(ctx, l, groups); err != nil {
		t.Fatal(err)
	}
	if _, err := l.compact(ctx, v); err != nil {
		t.Fatal(err)
	}
	was := keysFetchWait
	// Every other fetch too short to bring anything (the consumer is made
	// again at each), the others long enough.
	keysFetchWait = func(n int) time.Duration {
		if n%2 == 0 {
			return time.Millisecond
		}
		return time.Second
	}
	defer func() { keysFetchWait = was }()
	for range 3 {
		var buf bytes.Buffer
		if _, err := open().CopyState(ctx, v, []int{0, 1}, &buf); err != nil {
			t.Fatal(err)
		}
		if n, stale := strings.Count(buf.String(), "\n"), strings.Count(buf.String(), "\told\n"); n != rows || stale > 0 {
			t.Fatalf("the copy holds %d rows, %d of them the first state's: keys left unread", n, stale)
		}
	}
}
