package tests

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
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

// TestDemoServesTheCatalogPage: the demo, left running, serves the
// catalog page it prints, showing the publication it made.
func TestDemoServesTheCatalogPage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rejotBin, "demo")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	page := regexp.MustCompile(`The catalog page: (http://\S+)`)
	var url string
	waitFor(t, 90*time.Second, func() bool {
		if m := page.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		}
		return url != ""
	})
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "ReJot catalog") || !strings.Contains(string(body), "orders") {
		t.Fatalf("%s: %d\n%.500s", url, resp.StatusCode, body)
	}
}

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
