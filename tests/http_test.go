package tests

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

var httpAddrLine = regexp.MustCompile(`"http":"([0-9.:]+)"`)

// httpURL is the base URL of the sidecar's HTTP side, read from its log.
func (s *sidecar) httpURL(t *testing.T) string {
	t.Helper()
	var addr string
	waitFor(t, 10*time.Second, func() bool {
		m := httpAddrLine.FindStringSubmatch(s.logs())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return "http://" + addr
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric reads one sample of /metrics: the value of the line that starts
// with name and contains every label given; -1 when there is none.
func metric(t *testing.T, base, name string, labels ...string) float64 {
	t.Helper()
	_, body, err := get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return -1
}

// TestMetricsFollowReplication: /metrics of the owner's and the
// subscriber's sidecars count calls, captured and applied changes, and
// show lag going to zero.
func TestMetricsFollowReplication(t *testing.T) {
	owner, consumer, name := replicated(t, "metered", "CREATE TABLE t (id int PRIMARY KEY, v int)", "SELECT id, v FROM t", "copy")
	ownerHTTP, consumerHTTP := owner.sc.httpURL(t), consumer.sc.httpURL(t)
	pub := `publication="` + name + `"`
	if v := metric(t, ownerHTTP, "rejot_proxy_calls_total", `function="publish"`, `outcome="ok"`); v < 1 {
		t.Fatalf("publish calls: %v", v)
	}
	if v := metric(t, ownerHTTP, "rejot_proxy_client_connections"); v < 1 {
		t.Fatalf("open connections: %v", v)
	}
	if err := owner.exec(t, "INSERT INTO t SELECT g, g FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			_, o, _ := get(ownerHTTP + "/metrics")
			_, c, _ := get(consumerHTTP + "/metrics")
			t.Logf("owner:\n%s\nconsumer:\n%s", grepRejot(o), grepRejot(c))
		}
	}()
	// Copied or applied, depending on whether the owner's first fill was in
	// the log before the subscription started.
	moved := func() (applied, copied float64) {
		return max(metric(t, consumerHTTP, "rejot_subscription_changes_applied_total", `target="public.copy"`), 0),
			max(metric(t, consumerHTTP, "rejot_subscription_copied_rows", `target="public.copy"`), 0)
	}
	waitFor(t, 30*time.Second, func() bool {
		applied, copied := moved()
		return metric(t, ownerHTTP, "rejot_capture_changes_total", pub) >= 100 && applied+copied >= 100 &&
			metric(t, consumerHTTP, "rejot_subscription_lag_changes", `target="public.copy"`) == 0
	})
	applied, _ := moved()
	waitFor(t, 10*time.Second, func() bool { return metric(t, ownerHTTP, "rejot_capture_slot_retained_wal_bytes") >= 0 })
	// More changes move the counters.
	if err := owner.exec(t, "UPDATE t SET v = v + 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		return metric(t, consumerHTTP, "rejot_subscription_changes_applied_total", `target="public.copy"`) >= applied+100 &&
			metric(t, consumerHTTP, "rejot_subscription_lag_changes", `target="public.copy"`) == 0
	})
	if v := metric(t, consumerHTTP, "rejot_subscription_lag_seconds", `target="public.copy"`); v < 0 || v > 5 {
		t.Fatalf("lag seconds: %v", v)
	}
	if code, body, _ := get(ownerHTTP + "/healthz"); code != 200 || !strings.Contains(body, "alive") {
		t.Fatalf("healthz: %d %s", code, body)
	}
}

// TestReadyzFollowsTheCatalog: /readyz is ready when the upstream, the
// catalog and the event log answer, turns unready (503, saying why) when
// the catalog's server stops, and ready again when it is back.
func TestReadyzFollowsTheCatalog(t *testing.T) {
	cat, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Destroy()
	// The catalog named with --catalog does not exist yet: the sidecar
	// creates it.
	db := pg.CreateDB(t)
	sc := startSidecar(t, db, "--catalog", cat.URL("rejot"))
	base := sc.httpURL(t)
	ready := func() (bool, map[string]string) {
		code, body, err := get(base + "/readyz")
		if err != nil {
			return false, nil
		}
		var r struct {
			Ready  bool              `json:"ready"`
			Checks map[string]string `json:"checks"`
		}
		json.Unmarshal([]byte(body), &r)
		return code == 200 && r.Ready, r.Checks
	}
	var last map[string]string
	defer func() {
		if t.Failed() {
			t.Logf("last checks: %v", last)
		}
	}()
	waitFor(t, 30*time.Second, func() bool { ok, c := ready(); last = c; return ok })
	if err := cat.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		ok, checks := ready()
		return !ok && checks["catalog"] != "ok" && checks["upstream"] == "ok"
	})
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() bool { ok, _ := ready(); return ok })
}

func grepRejot(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "rejot_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
