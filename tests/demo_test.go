package tests

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemoOnce: `rejot demo --once` plays the story on its own throwaway
// cluster and exits cleanly.
func TestDemoOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, rejotBin, "demo", "--once").CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, must := range []string{"CALL rejot.publish", " orders      |       1 |     0 | shop  | {id}", " id          | bigint | t"} {
		if !strings.Contains(string(out), must) {
			t.Errorf("demo output lacks %q:\n%s", must, out)
		}
	}
}
