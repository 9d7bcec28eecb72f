package web

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
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
