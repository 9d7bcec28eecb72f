package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/web"
)

// TestCatalogPage: in a real browser, the catalog page shows a live setup —
// the owner's publication with its columns, types and key; the lineage
// from the owner to the version to the subscriber's target table; the
// subscription's status and lag — and shows a second subscription by
// itself, without a reload. With REJOT_SCREENSHOT=1 it also writes
// docs/catalog-page.png; run it alone then (-run CatalogPage), so the
// catalog holds only its demo: orders v1 of shop, subscribed by billing
// and analytics.
func TestCatalogPage(t *testing.T) {
	browser := chromium(t)
	demo := os.Getenv("REJOT_SCREENSHOT") == "1"
	shop, billing, analytics := pageSystem(t, "shop", demo), pageSystem(t, "billing", demo), pageSystem(t, "analytics", demo)
	pub := "orders"
	if !demo {
		pub = shop.name("orders") // the catalog is shared by the package's tests
	}
	publishOrders(t, shop, pub)
	for _, q := range []string{"CREATE SCHEMA billing", "CALL rejot.subscribe($1, 1, 'billing.orders')"} {
		if err := billing.exec(t, q, argsFor(q, pub)...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	cat, err := catalog.Open(context.Background(), pg.URL("rejot"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	srv := httptest.NewServer(web.CatalogPage(cat))
	defer srv.Close()
	ctx := newBrowser(t, browser)
	browse(t, ctx, chromedp.Navigate(srv.URL+"/"))
	// Gone if the page were loaded again: the updates below must come by polling.
	browse(t, ctx, chromedp.Evaluate[chromedp.Void]("window.rejotTestMarker = 'not reloaded'"))

	ids := pageIDs{owner: "owner:" + shop.db, version: "version:" + pub + "/1",
		billing: "target:" + billing.db + "/billing.orders", analytics: "target:" + analytics.db + "/analytics.orders"}
	waitInPage(t, ctx, subscriptionRow(billing.db, "billing.orders")+`?.querySelector(".sub-status")?.textContent === "streaming"`)
	// Changes after the copy, so the lag is a measured one.
	for i := 1; i <= 3; i++ {
		if err := shop.exec(t, "INSERT INTO orders VALUES ($1, 77, 12.50, 'placed', 'later')", 1000+i); err != nil {
			t.Fatal(err)
		}
	}
	targetConverges(t, 30*time.Second, shop.conn, ordersProjection, billing.conn, "billing.orders")
	checkPublication(t, readPage(t, ctx, pub), shop.db)
	checkLineage(t, readLineage(t, ctx), ids, false)
	checkSubscription(t, ctx, billing.db, "billing.orders")

	// A second subscriber appears on the open page, in the table and the picture.
	for _, q := range []string{"CREATE SCHEMA analytics", "CALL rejot.subscribe($1, 1, 'analytics.orders')"} {
		if err := analytics.exec(t, q, argsFor(q, pub)...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	waitInPage(t, ctx, subscriptionRow(analytics.db, "analytics.orders")+`?.querySelector(".sub-status")?.textContent === "streaming"`)
	waitInPage(t, ctx, fmt.Sprintf(`document.querySelector('#lineage g.edge[data-to=%s]')`, jsString(ids.analytics)))
	if marker := browse(t, ctx, chromedp.Evaluate[string]("String(window.rejotTestMarker)")); marker != "not reloaded" {
		t.Fatalf("the page was reloaded (marker %q)", marker)
	}
	checkLineage(t, readLineage(t, ctx), ids, true)
	checkSubscription(t, ctx, analytics.db, "analytics.orders")
	if demo {
		waitInPage(t, ctx, `document.getElementById("live").textContent.startsWith("live · updated")`)
		png := browse(t, ctx, chromedp.FullScreenshot(100))
		if err := os.WriteFile(filepath.Join("..", "docs", "catalog-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCatalogPageUnreachable: without a catalog the page says so, with 503.
func TestCatalogPageUnreachable(t *testing.T) {
	browser := chromium(t)
	srv := httptest.NewServer(web.CatalogPage(&catalog.Lazy{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	ctx := newBrowser(t, browser)
	browse(t, ctx, chromedp.Navigate(srv.URL+"/"))
	text := browse(t, ctx, chromedp.Evaluate[string]("document.getElementById('unavailable').innerText"))
	if !strings.Contains(text, "The catalog is unavailable") || !strings.Contains(text, "not reachable") {
		t.Fatalf("the page says %q", text)
	}
}

const ordersProjection = "SELECT id, customer_id, total, status FROM orders WHERE status <> 'draft'"

func publishOrders(t *testing.T, shop *publisher, pub string) {
	t.Helper()
	for _, q := range []string{
		"CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL, internal_note text)",
		"INSERT INTO orders SELECT g, g % 40, g * 1.25, CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'placed' END, 'n' FROM generate_series(1, 250) g",
		"CALL rejot.publish(name => $1, version => 1, query => $$" + ordersProjection + "$$, description => 'Orders other teams may rely on: placed and later, never drafts')",
	} {
		if err := shop.exec(t, q, argsFor(q, pub)...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	shop.catalogMinor(t, pub, 1, 0)
	// The owner's capture fills the log first, so subscribers start with a copy.
	var rows int64
	if err := shop.conn.QueryRow(context.Background(), "SELECT count(*) FROM ("+ordersProjection+") p").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	logDB := pg.Connect(t, "rejot")
	waitFor(t, 30*time.Second, func() bool {
		var head int64
		logDB.QueryRow(context.Background(), "SELECT head FROM rejot_log.streams WHERE publication = $1 AND version = 1", pub).Scan(&head)
		return head >= rows
	})
}

func argsFor(q string, pub string) []any {
	if strings.Contains(q, "$1") {
		return []any{pub}
	}
	return nil
}

// pageSystem is a sidecar in front of a fresh database; in the demo the
// database, and so the system, is called name.
func pageSystem(t *testing.T, name string, demo bool) *publisher {
	t.Helper()
	db := name
	if demo {
		ctx := context.Background()
		if err := pg.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			pg.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
		})
	} else {
		db = pg.CreateDB(t)
	}
	sc := startSidecar(t, db)
	conn, err := pgx.Connect(context.Background(), sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	p := &publisher{db: db, sc: sc, conn: conn}
	waitFor(t, 20*time.Second, func() bool {
		// Two queries: one on the catalog, one on the managed database.
		var n int
		var ok bool
		err := conn.QueryRow(context.Background(), "SELECT count(*) FROM rejot.systems WHERE system = $1", db).Scan(&n)
		conn.QueryRow(context.Background(), "SELECT to_regclass('_rejot.subscriptions') IS NOT NULL").Scan(&ok)
		return err == nil && n == 1 && ok
	})
	return p
}

// chromium finds the browser, or skips the test where there is none; CI
// installs it (scripts/install-deps.sh), so there it must be found.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium binary in CI; scripts/install-deps.sh should have installed it")
	}
	t.Skip("no chromium binary (scripts/install-deps.sh installs Debian's chromium)")
	return ""
}

// newBrowser starts a headless browser with one tab, closed when the test ends.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-dev-shm-usage", true))
	ctx, cancelTime := context.WithTimeout(context.Background(), 3*time.Minute)
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	ctx, cancelTab := chromedp.NewContext(ctx)
	t.Cleanup(func() { cancelTab(); cancelAlloc(); cancelTime() })
	return ctx
}

func browse[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitInPage waits until a JavaScript expression is truthy in the page,
// which refreshes itself every 2 seconds.
func waitInPage(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(45*time.Second),
		chromedp.WithPollingInterval(100*time.Millisecond)))
	if err != nil {
		html, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.getElementById('catalog').innerText"))
		t.Fatalf("the page never showed %s: %v\npage:\n%s", expr, err, html)
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func subscriptionRow(system, target string) string {
	return fmt.Sprintf(`document.querySelector('tr[data-system=%s][data-target=%s]')`, jsString(system), jsString(target))
}

type pagePublication struct {
	Title       string       `json:"title"`
	Status      string       `json:"status"`
	Owner       string       `json:"owner"`
	Description string       `json:"description"`
	Columns     []pageColumn `json:"columns"`
}

type pageColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Key  bool   `json:"key"`
}

// readPage reads version 1 of a publication's card as a person sees it.
func readPage(t *testing.T, ctx context.Context, pub string) pagePublication {
	t.Helper()
	return browse(t, ctx, chromedp.Evaluate[pagePublication](fmt.Sprintf(`(() => {
		const card = document.querySelector('article[data-publication=%s][data-version="1"]');
		if (!card) return {};
		const text = sel => card.querySelector(sel)?.innerText.trim() ?? "";
		return {
			title: text("h3"), status: text("[data-status]"), owner: text(".owner"), description: text(".desc"),
			columns: [...card.querySelectorAll("tr[data-column]")].map(tr => ({
				name: tr.querySelector(".col-name").innerText, type: tr.querySelector(".type").innerText,
				key: !!tr.querySelector(".key") && tr.querySelector(".key").offsetWidth > 0,
			})),
		};
	})()`, jsString(pub))))
}

func checkPublication(t *testing.T, got pagePublication, owner string) {
	t.Helper()
	want := []pageColumn{{"id", "bigint", true}, {"customer_id", "bigint", false}, {"total", "numeric(12,2)", false}, {"status", "text", false}}
	if !strings.HasSuffix(got.Title, " v1.0") || got.Status != "active" || got.Owner != "owned by "+owner+" · database "+owner ||
		!strings.HasPrefix(got.Description, "Orders other teams may rely on") || fmt.Sprint(got.Columns) != fmt.Sprint(want) {
		t.Errorf("the publication's card shows %+v\nwant columns %+v", got, want)
	}
}

type pageIDs struct{ owner, version, billing, analytics string }

type lineagePicture struct {
	Edges []string          `json:"edges"` // from → to
	Boxes map[string]string `json:"boxes"` // data-node → its text, for boxes drawn with a size that holds it
}

func readLineage(t *testing.T, ctx context.Context) lineagePicture {
	t.Helper()
	return browse(t, ctx, chromedp.Evaluate[lineagePicture](`(() => {
		const svg = document.querySelector("svg#lineage");
		if (!svg) return {edges: [], boxes: {}};
		const boxes = {};
		for (const g of svg.querySelectorAll("g.node")) {
			const r = g.querySelector("rect").getBBox(), texts = [...g.querySelectorAll("text")];
			const fits = texts.every(x => x.getComputedTextLength() + 14 <= r.width);
			if (r.width > 50 && r.height > 20 && fits) boxes[g.dataset.node] = texts.map(x => x.textContent).join(" | ");
		}
		const edges = [...svg.querySelectorAll("g.edge")].filter(g => g.querySelector("path").getTotalLength() > 50)
			.map(g => g.dataset.from + " → " + g.dataset.to);
		return {edges, boxes};
	})()`))
}

func checkLineage(t *testing.T, got lineagePicture, ids pageIDs, second bool) {
	t.Helper()
	want := []string{ids.owner + " → " + ids.version, ids.version + " → " + ids.billing}
	if second {
		want = append(want, ids.version+" → "+ids.analytics)
	}
	for _, e := range want {
		if !strings.Contains(strings.Join(got.Edges, "\n"), e) {
			t.Errorf("the lineage lacks the arrow %s; it has:\n%s", e, strings.Join(got.Edges, "\n"))
		}
	}
	for id, text := range map[string]string{ids.owner: "database ", ids.version: " v1.0 | active", ids.billing: "billing.orders"} {
		if !strings.Contains(got.Boxes[id], text) {
			t.Errorf("the lineage box %s shows %q, want %q in it (boxes: %v)", id, got.Boxes[id], text, got.Boxes)
		}
	}
}

// checkSubscription: the subscription's row says streaming with a lag
// measured in time and in changes (0 behind), and its arrow in the picture
// says it is caught up.
func checkSubscription(t *testing.T, ctx context.Context, system, target string) {
	t.Helper()
	waitInPage(t, ctx, subscriptionRow(system, target)+`?.querySelector(".behind")?.textContent === "0"`)
	row := browse(t, ctx, chromedp.Evaluate[[]string](subscriptionRow(system, target)+`.innerText.split("\t").map(s => s.trim())`))
	lag := regexp.MustCompile(`^\d+(\.\d)? (ms|s)$`)
	if len(row) != 7 || row[0] != system || row[1] != target || row[2] != "streaming" || !lag.MatchString(row[4]) || row[5] != "0" {
		t.Errorf("the subscription's row shows %q", row)
	}
	label := browse(t, ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector('#lineage g.edge[data-to=%s] text')?.textContent ?? ""`,
		jsString("target:"+system+"/"+target))))
	if label != "streaming · caught up" {
		t.Errorf("the arrow to %s says %q", target, label)
	}
}
