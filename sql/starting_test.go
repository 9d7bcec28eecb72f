package sql

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// TestWaitUntilServable: a call waits while the sidecar says it is not
// ready for what the call needs, runs once it is, and gets 57P03 saying
// what it waited for when the bound passes first; what a call does not
// need does not hold it up.
func TestWaitUntilServable(t *testing.T) {
	var looks atomic.Int32
	x := &Executor{StartWait: 200 * time.Millisecond}
	x.Waiting = func(_ context.Context, need Need) string {
		if need.Catalog && looks.Add(1) < 3 {
			return "the sidecar is starting: it is connecting to the catalog"
		}
		return ""
	}
	hurried := 0
	x.Hurry = func() { hurried++ }
	if err := x.waitUntilServable(context.Background(), Need{Catalog: true}); err != nil || looks.Load() != 3 || hurried != 1 {
		t.Fatalf("after two looks: %v (looks %d, hurried %d)", err, looks.Load(), hurried)
	}
	x.Waiting = func(_ context.Context, need Need) string {
		if need.Managed {
			return "the sidecar is starting: it is installing its schema _rejot in the database"
		}
		return ""
	}
	if err := x.waitUntilServable(context.Background(), Need{Catalog: true}); err != nil {
		t.Fatalf("a need the sidecar meets: %v", err)
	}
	err := x.waitUntilServable(context.Background(), Need{Managed: true})
	var pe *pgerr.Error
	if !errors.As(err, &pe) || pe.Code != pgerr.CannotConnectNow || !strings.Contains(pe.Message, "installing its schema _rejot") || pe.Hint == "" {
		t.Fatalf("never ready: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := x.waitUntilServable(ctx, Need{Managed: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
