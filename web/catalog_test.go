package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/catalog"
)

// source is an overview held in memory: the page renders whatever the
// catalog says, so its tests need no database.
type source struct {
	o   *catalog.Overview
	err error
}

func (s *source) Overview(context.Context) (*catalog.Overview, error) { return s.o, s.err }

func demo() *catalog.Overview {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	lag, behind, pos := 0.012, int64(0), int64(301)
	return &catalog.Overview{At: at,
		Publications: []catalog.PublicationVersion{
			{Publication: "orders", Version: 1, Minor: 0, Owner: "shop", Database: "shop", Status: "deprecated",
				Sunset: "2027-06-01", Note: "use version 2", Description: "Orders other teams may rely on",
				Query: "SELECT id, total FROM orders", KeyColumns: []string{"id"}, CreatedAt: at, UpdatedAt: at,
				Columns: []catalog.Column{{Name: "id", Type: "bigint", IsKey: true}, {Name: "total", Type: "numeric(12,2)", Nullable: true}},
				Subscriptions: []catalog.SubscriptionStatus{
					{Target: "billing.orders", System: "billing", Publication: "orders", Version: 1, Status: "streaming",
						CopiedRows: 1300, AppliedPosition: &pos, LagSeconds: &lag, LagChanges: &behind, LastAppliedAt: &at},
					{Target: "ops.orders", System: "ops", Publication: "orders", Version: 1, Status: "failed",
						Error: "target table is gone"},
				}},
			{Publication: "orders", Version: 2, Minor: 1, Owner: "shop", Database: "shop", Status: "failed",
				Problem:       "column note of public.orders is gone; publish the version again",
				Columns:       []catalog.Column{{Name: "id", Type: "bigint", IsKey: true}, {Name: "note", Type: "text", Nullable: true, SinceMinor: 1}},
				Subscriptions: []catalog.SubscriptionStatus{}},
			{Publication: "<script>alert(1)</script>", Version: 1, Owner: `evil"sys`, Database: "x", Status: "active",
				Description: `<img src=x onerror=alert(1)>`, Columns: []catalog.Column{{Name: "<b>k</b>", Type: "int", IsKey: true}},
				Subscriptions: []catalog.SubscriptionStatus{{Target: `s."<t>"`, System: "billing", Status: "copying", CopiedRows: 5}}},
		},
		Systems: []catalog.SystemStatus{
			{Name: "billing", Database: "billing", Address: "127.0.0.1:6433", Version: "v1", LastSeen: at.Add(-3 * time.Second)},
			{Name: "shop", Database: "shop", Address: "127.0.0.1:6432", Version: "v1", LastSeen: at.Add(-10 * time.Minute),
				Problem: "wal_level is replica, not logical"},
		}}
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, rec.Header(), string(body)
}

func TestPageShowsTheCatalog(t *testing.T) {
	code, h, body := get(t, CatalogPage(&source{o: demo()}), "/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(h.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("GET /: %d %v", code, h)
	}
	for _, want := range []string{
		`<span class="name">orders</span> <span class="ver">v1.0</span>`,
		`deprecated · sunset 2027-06-01`, `use version 2`, `Orders other teams may rely on`,
		`<tr data-column="id">`, `<span class="key" title="part of the key">key</span>`, `<code class="type">numeric(12,2)</code>`,
		`since .1`, `<tr data-system="billing" data-target="billing.orders">`, `<td class="num lag">12 ms</td>`, `1,300`,
		`target table is gone`, `not seen for 10 min`, `wal_level is replica, not logical`, `<span class="badge up">up</span>`,
		`data-node="owner:shop"`, `data-node="version:orders/1"`, `data-node="target:billing/billing.orders"`,
		`data-from="owner:shop" data-to="version:orders/1"`, `data-from="version:orders/1" data-to="target:billing/billing.orders"`,
		`streaming · caught up`, `<script src="catalog.js"></script>`, `href="catalog.json"`,
		`<span class="badge failed" data-status>failed</span>`, `<g class="node version failed" data-node="version:orders/2"`,
		`<p class="problem" data-problem>Cannot be computed: column note of public.orders is gone; publish the version again</p>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
}

// TestPageEscapes: names and descriptions are the catalog's users' text;
// none of it becomes markup.
func TestPageEscapes(t *testing.T) {
	_, _, body := get(t, CatalogPage(&source{o: demo()}), "/")
	for _, bad := range []string{"<script>alert", "<img src=x", "<b>k</b>", `evil"sys`, `"<t>"`} {
		if strings.Contains(body, bad) {
			t.Errorf("unescaped %s", bad)
		}
	}
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Error("the hostile name is not shown escaped")
	}
}

func TestFragmentIsTheLivePart(t *testing.T) {
	code, _, body := get(t, CatalogPage(&source{o: demo()}), "/?fragment")
	if code != 200 || strings.Contains(body, "<html") || strings.Contains(body, "<style") || !strings.Contains(body, `<svg id="lineage"`) {
		t.Fatalf("fragment: %d\n%s", code, body)
	}
}

func TestJSON(t *testing.T) {
	code, h, body := get(t, CatalogPage(&source{o: demo()}), "/catalog.json")
	var o catalog.Overview
	if code != 200 || h.Get("Content-Type") != "application/json; charset=utf-8" || json.Unmarshal([]byte(body), &o) != nil {
		t.Fatalf("catalog.json: %d %v %s", code, h, body)
	}
	if len(o.Publications) != 3 || o.Publications[0].Subscriptions[0].Target != "billing.orders" || *o.Publications[0].Subscriptions[0].LagSeconds != 0.012 {
		t.Fatalf("catalog.json: %+v", o)
	}
}

// TestUnavailable: every part says so with 503, the page still polls.
func TestUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		says string
	}{
		{catalog.ErrUnavailable, "The catalog is not reachable"},
		{fmt.Errorf("cannot read the catalog: %w", errors.New("conn closed")), "could not be read: cannot read the catalog: conn closed"},
	} {
		p := CatalogPage(&source{err: c.err})
		for _, path := range []string{"/", "/?fragment", "/catalog.json"} {
			code, _, body := get(t, p, path)
			if code != http.StatusServiceUnavailable || !strings.Contains(body, c.says) {
				t.Errorf("%s with %v: %d %s", path, c.err, code, body)
			}
		}
		if _, _, body := get(t, p, "/"); !strings.Contains(body, `<script src="catalog.js">`) {
			t.Error("the unavailable page does not poll")
		}
	}
}

func TestRoutes(t *testing.T) {
	p := CatalogPage(&source{o: demo()})
	if code, h, body := get(t, p, "/catalog.js"); code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/javascript") || !strings.Contains(body, "?fragment") {
		t.Errorf("catalog.js: %d %v", code, h)
	}
	if code, _, _ := get(t, p, "/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest("POST", "/", nil))
	if rec.Code != 405 {
		t.Errorf("POST: %d", rec.Code)
	}
	// Mounted under a prefix, the page without its slash redirects to it.
	srv := httptest.NewServer(http.StripPrefix("/catalog", p))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/catalog")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/catalog/" || resp.StatusCode != 200 {
		t.Errorf("/catalog went to %s: %d", resp.Request.URL.Path, resp.StatusCode)
	}
}

// TestLineageLayout: three columns, owners centred on their versions,
// every edge from the right of its source box to the left of its target.
func TestLineageLayout(t *testing.T) {
	l := layoutLineage(demo())
	nodes := map[string]node{}
	for _, n := range l.Nodes {
		if n.X < 0 || n.Y < 0 || n.X+n.W > l.Width || n.Y+n.H > l.Height {
			t.Errorf("node %s outside the picture: %+v", n.ID, n)
		}
		nodes[n.ID] = n
	}
	if len(l.Nodes) != 2+3+3 || len(l.Edges) != 3+3 {
		t.Fatalf("%d nodes, %d edges: %+v", len(l.Nodes), len(l.Edges), l)
	}
	owner, v1, v2 := nodes[`owner:shop`], nodes["version:orders/1"], nodes["version:orders/2"]
	if !(owner.X < v1.X && v1.X < nodes["target:billing/billing.orders"].X) {
		t.Errorf("columns out of order: %+v", l.Nodes)
	}
	if mid := (v1.Y + v2.Y + v2.H) / 2; abs(owner.Y+owner.H/2-mid) > 1 {
		t.Errorf("owner at %d, its versions' middle %d", owner.Y+owner.H/2, mid)
	}
	move := regexp.MustCompile(`^M(\d+),(\d+) C.*[ L](\d+),(\d+)$`)
	for _, e := range l.Edges {
		from, to := nodes[e.From], nodes[e.To]
		m := move.FindStringSubmatch(e.Path)
		want := fmt.Sprintf("%d,%d %d,%d", from.X+from.W, from.Y+from.H/2, to.X-2, to.Y+to.H/2)
		if m == nil || m[1]+","+m[2]+" "+m[3]+","+m[4] != want {
			t.Errorf("edge %s → %s: %s, want ends %s", e.From, e.To, e.Path, want)
		}
	}
	if layoutLineage(&catalog.Overview{}) != nil {
		t.Error("an empty catalog has a picture")
	}
}

func abs(n int) int { return max(n, -n) }

func TestFormats(t *testing.T) {
	for _, c := range []struct {
		s    float64
		want string
	}{{0, "0 ms"}, {0.0123, "12 ms"}, {1.25, "1.2 s"}, {42, "42 s"}, {600, "10 min"}, {3 * 3600, "3 h"}, {3 * 86400, "3 days"}} {
		if got := formatSeconds(&c.s); got != c.want {
			t.Errorf("formatSeconds(%v) = %s, want %s", c.s, got, c.want)
		}
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%d) = %s", n, got)
		}
	}
	if a, b := anchor("orders", 1), anchor("Orders é", 1); a != "v-orders-1" || b == a || strings.ContainsAny(b, " é") {
		t.Errorf("anchors %s %s", a, b)
	}
}

// TestLineageShowsJoinedTables: a version that reads several tables says
// how many in its box and names them, root first, in its tooltip.
func TestLineageShowsJoinedTables(t *testing.T) {
	o := demo()
	o.Publications[0].Tables = []string{`"public"."orders"`, `"public"."customers"`}
	o.Publications[0].Status, o.Publications[0].Sunset = "active", ""
	l := layoutLineage(o)
	for _, n := range l.Nodes {
		if n.ID == fmt.Sprintf("version:%s/%d", o.Publications[0].Publication, o.Publications[0].Version) {
			if !strings.Contains(n.Detail, "joins 2 tables") || !strings.Contains(n.Tooltip, `reads "public"."orders", "public"."customers"`) {
				t.Fatalf("version box %q, tooltip %q", n.Detail, n.Tooltip)
			}
			return
		}
	}
	t.Fatal("no box of the version")
}
