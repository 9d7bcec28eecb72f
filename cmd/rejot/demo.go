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

	"github.com/rejot-dev/rejot/tests/pgtest"
)

// demoScript is played through the sidecar with psql.
const demoScript = `\echo '-- ordinary SQL is relayed to Postgres unchanged'
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL, internal_note text);
INSERT INTO orders VALUES (1, 'ada', 1250, 'vip'), (2, 'grace', 9900, NULL);
SELECT id, customer, total_cents FROM orders ORDER BY id;
\echo '-- rejot calls are answered by the sidecar itself: publish a public schema'
CALL rejot.publish(name => 'orders', version => 1,
                   query => $$SELECT id, customer, total_cents FROM public.orders$$,
                   description => 'Orders other teams may rely on');
SELECT pg_sleep(0.5);
\echo '-- the shared catalog, queried through the same connection'
SELECT publication, version, minor, owner, key_columns FROM rejot.publications;
SELECT name, type, is_key FROM rejot.columns WHERE publication = 'orders' ORDER BY position;
`

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	once := fs.Bool("once", os.Getenv("REJOT_DEMO_ONCE") != "", "play the story and exit (env REJOT_DEMO_ONCE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, _ := newLogger("warn")
	fmt.Println("Starting a throwaway Postgres cluster…")
	pg, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		return err
	}
	defer pg.Destroy()
	if err := pg.Exec(ctx, "postgres", "CREATE DATABASE shop"); err != nil {
		return err
	}
	sc, err := newSidecar(&serveConfig{upstream: pg.URL("shop"), startupTimeout: time.Minute}, log)
	if err != nil {
		return err
	}
	ln, err := listenDemo()
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
	url := fmt.Sprintf("postgres://postgres@%s/shop?sslmode=disable", ln.Addr())
	fmt.Printf("Sidecar for database shop listening on %s (Postgres itself on %s)\n\n", ln.Addr(), pg.Addr())
	if err := playScript(ctx, url); err != nil {
		return err
	}
	if *once {
		return nil
	}
	fmt.Printf("\nConnect with:\n\n  psql %q\n\nPress Ctrl-C to stop and remove everything.\n", url)
	<-ctx.Done()
	fmt.Println("\nStopping…")
	return nil
}

// listenDemo takes :6432 when it is free, else any port.
func listenDemo() (net.Listener, error) {
	if ln, err := net.Listen("tcp", "127.0.0.1:6432"); err == nil {
		return ln, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

func playScript(ctx context.Context, url string) error {
	psql, err := exec.LookPath("psql")
	if err != nil {
		bin, berr := pgtest.BinDir()
		if berr != nil {
			return fmt.Errorf("psql not found: %w", err)
		}
		psql = filepath.Join(bin, "psql")
	}
	cmd := exec.CommandContext(ctx, psql, "-X", "-v", "ON_ERROR_STOP=1", "-e", url)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(demoScript), os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("demo script failed: %w", err)
	}
	return nil
}
