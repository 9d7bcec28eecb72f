package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgcluster"
)

// The story, played with psql through the two sidecars.
const (
	shopScript = `\echo '-- shop: ordinary SQL is relayed to Postgres unchanged'
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL,
                     status text NOT NULL DEFAULT 'placed', internal_note text);
INSERT INTO orders VALUES (1, 'ada', 1250, 'placed', 'vip'), (2, 'grace', 9900, 'placed', NULL),
                          (3, 'linus', 500, 'draft', NULL);
\echo '-- shop: publish a public schema: a projection other teams may rely on'
CALL rejot.publish(name => 'orders', version => 1,
                   query => $$SELECT id, customer, total_cents, status FROM public.orders WHERE status <> 'draft'$$,
                   description => 'Orders other teams may rely on');
`
	catalogScript = `\echo '-- the shared catalog, queried through the same connection'
SELECT publication, version, minor, owner, key_columns FROM rejot.publications;
SELECT name, type, is_key FROM rejot.columns WHERE publication = 'orders' ORDER BY position;
`
	billingScript = `\echo '-- billing: subscribe; the sidecar creates billing.orders, copies, then streams'
CREATE SCHEMA billing;
CALL rejot.subscribe(publication => 'orders', version => 1, target => 'billing.orders');
DO $$ BEGIN
  FOR i IN 1..200 LOOP
    EXIT WHEN (SELECT count(*) FROM billing.orders) = 2;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
\d billing.orders
SELECT * FROM billing.orders ORDER BY id;
`
	billingAfter = `\echo '-- billing: the target followed the owner'
SELECT * FROM billing.orders ORDER BY id;
SELECT target, publication, version, status, applied_position, lag_changes FROM rejot.subscriptions;
`
)

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	once := fs.Bool("once", os.Getenv("REJOT_DEMO_ONCE") != "", "play the story and exit (env REJOT_DEMO_ONCE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := os.Getenv("REJOT_DEMO_LOG_LEVEL")
	if level == "" {
		level = "warn"
	}
	log, _ := newLogger(level)
	fmt.Println("Starting a throwaway Postgres cluster…")
	pg, err := pgcluster.Start(pgcluster.Options{})
	if err != nil {
		return err
	}
	defer pg.Destroy()
	var urls, pages []string
	for i, db := range []string{"shop", "billing"} {
		if err := pg.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			return err
		}
		cfg := &serveConfig{upstream: pg.URL(db), startupTimeout: time.Minute, shutdownTimeout: 5 * time.Second}
		sc, err := newSidecar(cfg, log)
		if err != nil {
			return err
		}
		// Metrics, health and the catalog page, as --http serves them.
		hl, err := listenDemo(9187 + i)
		if err != nil {
			return err
		}
		sc.http, sc.httpLn = sc.httpServer(cfg), hl
		// Two sidecars share this process: each relay's epoll thread would
		// hold a scheduler slot, and two would starve everything else.
		sc.srv.DisableEventLoop = true
		ln, err := listenDemo(6432 + i)
		if err != nil {
			return err
		}
		sidecarCtx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sc.run(sidecarCtx, ln) }()
		defer func() { stop(); <-done }()
		for deadline := time.Now().Add(30 * time.Second); !sc.lazy.Ready() && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		urls = append(urls, fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", ln.Addr(), db))
		pages = append(pages, fmt.Sprintf("http://%s/", hl.Addr()))
		fmt.Printf("Sidecar for database %s listening on %s (catalog page, metrics and health on http://%s/)\n", db, ln.Addr(), hl.Addr())
	}
	shop, billing := urls[0], urls[1]
	fmt.Printf("(Postgres itself on %s)\n\n", pg.Addr())
	if err := playScript(ctx, shop, shopScript); err != nil {
		return err
	}
	if err := waitPublished(ctx, shop); err != nil {
		return err
	}
	if err := playScript(ctx, shop, catalogScript); err != nil {
		return err
	}
	if err := playScript(ctx, billing, billingScript); err != nil {
		return err
	}
	if err := watchLag(ctx, shop, billing); err != nil {
		return err
	}
	time.Sleep(1200 * time.Millisecond) // the sidecar reports to the catalog every second
	if err := playScript(ctx, billing, billingAfter); err != nil {
		return err
	}
	if *once {
		return nil
	}
	fmt.Printf("\nTry your own SQL:\n\n  psql %q   # the owner\n  psql %q   # the subscriber\n\n"+
		"The catalog page: %s (the owner's sidecar; the subscriber's is %s), with /metrics and /readyz beside it.\n\n"+
		"Press Ctrl-C to stop and remove everything.\n", shop, billing, pages[0], pages[1])
	<-ctx.Done()
	fmt.Println("\nStopping…")
	return nil
}

// waitPublished waits until the catalog shows the publication: a call
// reaches the catalog through the owner's outbox, just after it commits.
func waitPublished(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = 'orders'").Scan(&n); err == nil && n == 1 {
			return nil
		}
	}
	return fmt.Errorf("the publication did not reach the catalog within 30s")
}

// watchLag writes to the owner and times how long each change takes to
// show in the subscriber's table.
func watchLag(ctx context.Context, shop, billing string) error {
	owner, err := pgx.Connect(ctx, shop)
	if err != nil {
		return err
	}
	defer owner.Close(ctx)
	target, err := pgx.Connect(ctx, billing)
	if err != nil {
		return err
	}
	defer target.Close(ctx)
	fmt.Println("\n-- shop writes; billing.orders follows:")
	for _, step := range []struct {
		sql, check string
	}{
		{"INSERT INTO orders VALUES (4, 'margaret', 4200, 'placed', 'new')", "SELECT count(*) = 1 FROM billing.orders WHERE id = 4"},
		{"UPDATE orders SET total_cents = 1500 WHERE id = 1", "SELECT count(*) = 1 FROM billing.orders WHERE id = 1 AND total_cents = 1500"},
		{"UPDATE orders SET status = 'placed' WHERE id = 3", "SELECT count(*) = 1 FROM billing.orders WHERE id = 3"},
		{"DELETE FROM orders WHERE id = 2", "SELECT count(*) = 0 FROM billing.orders WHERE id = 2"},
	} {
		start := time.Now()
		if _, err := owner.Exec(ctx, step.sql); err != nil {
			return err
		}
		for {
			var ok bool
			if err := target.QueryRow(ctx, step.check).Scan(&ok); err != nil {
				return err
			}
			if ok {
				break
			}
			if time.Since(start) > 30*time.Second {
				return fmt.Errorf("the change did not reach billing.orders within 30s: %s", step.sql)
			}
			time.Sleep(time.Millisecond)
		}
		fmt.Printf("  %-60s reached billing in %d ms\n", step.sql, time.Since(start).Milliseconds())
	}
	fmt.Println()
	return nil
}

// listenDemo takes the port when it is free, else any port.
func listenDemo(port int) (net.Listener, error) {
	if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		return ln, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

func playScript(ctx context.Context, url, script string) error {
	psql, err := exec.LookPath("psql")
	if err != nil {
		bin, berr := pgcluster.BinDir()
		if berr != nil {
			return fmt.Errorf("psql not found: %w", err)
		}
		psql = filepath.Join(bin, "psql")
	}
	cmd := exec.CommandContext(ctx, psql, "-X", "-v", "ON_ERROR_STOP=1", "-e", url)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(script), os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("demo script failed: %w", err)
	}
	return nil
}
