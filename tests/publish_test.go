package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// publisher is a sidecar in front of a fresh database, with a connection.
type publisher struct {
	db   string
	sc   *sidecar
	conn *pgx.Conn
}

func newPublisher(t *testing.T) *publisher {
	t.Helper()
	return publisherOn(t, pg.CreateDB(t))
}

// publisherOn starts a sidecar in front of an existing database.
func publisherOn(t *testing.T, db string) *publisher {
	t.Helper()
	sc := startSidecar(t, db)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	p := &publisher{db: db, sc: sc, conn: conn}
	// The sidecar installs _rejot and registers in the catalog on start.
	waitFor(t, 20*time.Second, func() bool {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM rejot.systems WHERE system = $1", db).Scan(&n)
		var ok bool
		conn.QueryRow(ctx, "SELECT to_regclass('_rejot.subscriptions') IS NOT NULL").Scan(&ok)
		return err == nil && n == 1 && ok
	})
	return p
}

// name makes a publication name unique to this test (the catalog is shared).
func (p *publisher) name(base string) string { return base + "_" + strings.TrimPrefix(p.db, "t") }

func (p *publisher) exec(t *testing.T, sql string, args ...any) error {
	t.Helper()
	_, err := p.conn.Exec(context.Background(), sql, args...)
	return err
}

// catalogMinor waits until the catalog shows a publication version at the
// given minor; -1 waits until it is absent (checked for a while).
func (p *publisher) catalogMinor(t *testing.T, name string, version, minor int) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var got int
		err := p.conn.QueryRow(ctx, "SELECT minor FROM rejot.publications WHERE publication = $1 AND version = $2", name, version).Scan(&got)
		switch {
		case minor >= 0 && err == nil && got == minor:
			return
		case minor < 0 && errors.Is(err, pgx.ErrNoRows) && time.Now().After(deadline.Add(-12*time.Second)):
			return
		case time.Now().After(deadline):
			t.Fatalf("catalog: %s v%d minor %d, %v; want %d\n%s", name, version, got, err, minor, p.sc.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pgErr(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return &pgconn.PgError{Message: fmt.Sprint(err)}
}

func TestPublishVersionsAndCompatibility(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("orders")
	if err := p.exec(t, `CREATE TYPE status AS ENUM ('draft', 'placed');
		CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, total numeric(12,2), status status NOT NULL, note text)`); err != nil {
		t.Fatal(err)
	}
	q1 := "SELECT id, customer_id, total FROM public.orders WHERE status <> 'draft'"
	var pub, cols string
	var version, minor int
	err := p.conn.QueryRow(ctx, "CALL rejot.publish(name => $1, version => 1, query => $2, description => 'Orders')", name, q1).
		Scan(&pub, &version, &minor, &cols)
	if err != nil || pub != name || version != 1 || minor != 0 || cols != "id bigint key, customer_id integer, total numeric(12,2)" {
		t.Fatalf("publish: %s %d %d %q, %v", pub, version, minor, cols, err)
	}
	p.catalogMinor(t, name, 1, 0)
	var key []string
	var desc string
	p.conn.QueryRow(ctx, "SELECT key_columns, description FROM rejot.publications WHERE publication = $1", name).Scan(&key, &desc)
	if strings.Join(key, ",") != "id" || desc != "Orders" {
		t.Fatalf("catalog row: %v %q", key, desc)
	}
	// The same again: nothing changes.
	p.conn.QueryRow(ctx, "SELECT * FROM rejot.publish($1, 1, $2, 'Orders')", name, q1).Scan(&pub, &version, &minor, &cols)
	if minor != 0 {
		t.Fatalf("republish: minor %d", minor)
	}
	// A column added: minor 1, columns in the catalog with since_minor.
	q2 := "SELECT id, customer_id, total, status FROM public.orders WHERE status <> 'draft'"
	p.conn.QueryRow(ctx, "SELECT rejot.publish($1, 1, $2)", name, q2).Scan(&pub, &version, &minor, &cols)
	if minor != 1 {
		t.Fatalf("added column: minor %d", minor)
	}
	p.catalogMinor(t, name, 1, 1)
	var since int
	var typ string
	p.conn.QueryRow(ctx, "SELECT type, since_minor FROM rejot.columns WHERE publication = $1 AND name = 'status'", name).Scan(&typ, &since)
	if typ != "status" || since != 1 {
		t.Fatalf("column status: %s since %d", typ, since)
	}
	// Removing or retyping a column is refused with the way forward.
	for _, q := range []string{"SELECT id, customer_id, status FROM public.orders", "SELECT id, customer_id::text AS customer_id, total, status FROM public.orders"} {
		err := p.exec(t, "CALL rejot.publish($1, 1, $2)", name, q)
		if pe := pgErr(err); pe.Code != "0A000" || !strings.Contains(pe.Hint, "version 2") {
			t.Fatalf("breaking change %s: %v (hint %q)", q, err, pe.Hint)
		}
	}
	// Version 2 lives beside version 1.
	if err := p.exec(t, "CALL rejot.publish($1, 2, 'SELECT id, note FROM orders')", name); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, name, 2, 0)
	p.catalogMinor(t, name, 1, 1)
}

func TestPublishInTransactions(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("items")
	if err := p.exec(t, "CREATE TABLE items (id int PRIMARY KEY, label text)"); err != nil {
		t.Fatal(err)
	}
	// Rolled back: no trace in the catalog nor in the owner's record.
	tx, _ := p.conn.Begin(ctx)
	if _, err := tx.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, label FROM items')", name); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	p.catalogMinor(t, name, 1, -1)
	var n int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM _rejot.publications WHERE publication = $1", name).Scan(&n)
	if n != 0 {
		t.Fatalf("owner's record after rollback: %d rows", n)
	}
	// A migration in one query string: the table and the publication
	// commit together, or not at all.
	migration := fmt.Sprintf(`CREATE TABLE widgets (id int PRIMARY KEY, size int);
		CALL rejot.publish('%s', 1, 'SELECT id, size, nosuch FROM widgets');`, p.name("widgets"))
	_, err := p.conn.PgConn().Exec(ctx, migration).ReadAll()
	pe := pgErr(err)
	if pe.Code != "42703" || !strings.Contains(pe.Message, "nosuch") {
		t.Fatalf("failing migration: %v", err)
	}
	if want := strings.Index(migration, "nosuch") + 1; int(pe.Position) != want {
		t.Errorf("error position %d, want %d (inside the query argument)", pe.Position, want)
	}
	var exists bool
	p.conn.QueryRow(ctx, "SELECT to_regclass('widgets') IS NOT NULL").Scan(&exists)
	if exists {
		t.Fatal("the migration's CREATE TABLE survived the failed publish")
	}
	migration = strings.Replace(migration, ", nosuch", "", 1)
	if _, err := p.conn.PgConn().Exec(ctx, migration).ReadAll(); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, p.name("widgets"), 1, 0)
}

func TestPublishNameBelongsToItsSystem(t *testing.T) {
	a, b := newPublisher(t), newPublisher(t)
	name := a.name("shared")
	for _, p := range []*publisher{a, b} {
		if err := p.exec(t, "CREATE TABLE things (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM things')", name); err != nil {
		t.Fatal(err)
	}
	err := b.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM things')", name)
	if pe := pgErr(err); pe.Code != "42710" || !strings.Contains(pe.Message, a.db) {
		t.Fatalf("other system's name: %v", err)
	}
}
