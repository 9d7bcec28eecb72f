package tests

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemoOnce: `rejot demo --once` plays the story on its own throwaway
// cluster — publish in shop, subscribe in billing, writes that follow —
// and exits cleanly.
func TestDemoOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, rejotBin, "demo", "--once").CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, must := range []string{"CALL rejot.publish", " orders      |       1 |     0 | shop  | {id}", " id          | bigint | t",
		"CALL rejot.subscribe", "reached billing in", "  3 | linus    |         500 | placed",
		" billing.orders | orders      |       1 | streaming |                7 |           0"} {
		if !strings.Contains(string(out), must) {
			t.Errorf("demo output lacks %q:\n%s", must, out)
		}
	}
}
