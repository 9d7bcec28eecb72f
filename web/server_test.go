package web

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadyz: /readyz is 503 when a check fails and 200 otherwise, and
// shows what is degraded either way without it changing the status.
func TestReadyz(t *testing.T) {
	ok := func(context.Context) error { return nil }
	failing := func(context.Context) error { return errors.New("the catalog is not reachable") }
	cases := []struct {
		name     string
		probe    func(context.Context) error
		degraded map[string]string
		code     int
	}{
		{"ready", ok, nil, 200},
		{"ready, degraded", ok, map[string]string{"capture_versions": "orders version 1: column customer does not exist"}, 200},
		{"unready", failing, nil, 503},
		{"unready, degraded", failing, map[string]string{"capture_slot": "slot rejot_shop has not confirmed"}, 503},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{Checks: []Check{{Name: "upstream", Probe: ok}, {Name: "catalog", Probe: c.probe}},
				Degraded: func() map[string]string { return c.degraded }}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			var body readiness
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if rec.Code != c.code || body.Ready != (c.code == 200) {
				t.Fatalf("status %d, ready %v: %s", rec.Code, body.Ready, rec.Body)
			}
			if body.Checks["upstream"] != "ok" || (c.code == 503) != (body.Checks["catalog"] != "ok") {
				t.Fatalf("checks: %v", body.Checks)
			}
			if len(body.Degraded) != len(c.degraded) {
				t.Fatalf("degraded: %v, want %v", body.Degraded, c.degraded)
			}
			for k, v := range c.degraded {
				if body.Degraded[k] != v {
					t.Fatalf("degraded[%s] = %q, want %q", k, body.Degraded[k], v)
				}
			}
		})
	}
}

// TestReadyzBoundsProbes: requests to /readyz at once share one run of
// the checks, and requests within readyTTL of it get its result, so that
// whoever reaches the port cannot make the sidecar open upstream
// connections as fast as it asks; a later request runs them again.
func TestReadyzBoundsProbes(t *testing.T) {
	var runs atomic.Int32
	s := &Server{Checks: []Check{{Name: "upstream", Probe: func(context.Context) error {
		runs.Add(1)
		time.Sleep(50 * time.Millisecond)
		return nil
	}}}}
	h := s.Handler()
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := get(); code != 200 {
				t.Errorf("status %d", code)
			}
		}()
	}
	wg.Wait()
	for range 20 {
		get()
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("70 requests within %v ran the checks %d times, want once", readyTTL, n)
	}
	time.Sleep(readyTTL + 100*time.Millisecond)
	get()
	if n := runs.Load(); n != 2 {
		t.Fatalf("a request after %v ran the checks %d times in all, want 2", readyTTL, n)
	}
}

// TestReadyzAnswersWhatever: a check that never returns, whatever its
// context says, makes /readyz unready within checkTimeout, not hang; and
// an evaluation that panicked does not leave the next request waiting for
// it.
func TestReadyzAnswersWhatever(t *testing.T) {
	never := make(chan struct{})
	defer close(never)
	s := &Server{Checks: []Check{
		{Name: "upstream", Probe: func(context.Context) error { return nil }},
		{Name: "event_log", Probe: func(context.Context) error { <-never; return nil }},
	}}
	start := time.Now()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	var body readiness
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 503 || body.Checks["upstream"] != "ok" || body.Checks["event_log"] == "ok" || time.Since(start) > 2*checkTimeout {
		t.Fatalf("a check that never answers: status %d, %v after %v", rec.Code, body.Checks, time.Since(start))
	}

	panics := true
	p := &Server{Checks: []Check{{Name: "upstream", Probe: func(context.Context) error { return nil }}},
		Degraded: func() map[string]string {
			if panics {
				panics = false
				panic("degraded")
			}
			return nil
		}}
	func() {
		defer func() { recover() }() // as net/http does
		p.Handler().ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/readyz", nil))
	}()
	done := make(chan int)
	go func() {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		done <- rec.Code
	}()
	select {
	case code := <-done:
		if code != 200 {
			t.Fatalf("after a panic: status %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("after an evaluation panicked, /readyz waits for it for ever")
	}
}
