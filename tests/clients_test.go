package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	stdsql "database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// TestDatabaseSQL: database/sql through pgx's stdlib driver.
func TestDatabaseSQL(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	h, err := stdsql.Open("pgx", sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.SetMaxOpenConns(4)
	ctx := context.Background()
	if _, err := h.ExecContext(ctx, "CREATE TABLE kv (k text PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	tx, err := h.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := tx.PrepareContext(ctx, "INSERT INTO kv VALUES ($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []string{"a", "b", "c"} {
		if _, err := stmt.ExecContext(ctx, k, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := h.QueryRowContext(ctx, "SELECT sum(v) FROM kv WHERE k <> $1", "z").Scan(&sum); err != nil || sum != 3 {
		t.Fatalf("sum = %d, %v", sum, err)
	}
	var v string
	if err := h.QueryRowContext(ctx, "SELECT rejot.version()").Scan(&v); err != nil || v == "" {
		t.Fatalf("rejot.version() = %q, %v", v, err)
	}
	_, err = h.ExecContext(ctx, "INSERT INTO kv VALUES ('a', 1)")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" {
		t.Fatalf("duplicate key: %v", err)
	}
}

// TestCancel: a client's CancelRequest reaches the backend running its query.
func TestCancel(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	conn, err := pgx.Connect(context.Background(), sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = conn.Exec(ctx, "SELECT pg_sleep(30)")
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("pg_sleep was not cancelled: %v after %v", err, time.Since(start))
	}
	// pgx closes a connection whose context ends; the server must have
	// received the cancel (not just a dropped socket): check with a second
	// connection that the statement was cancelled rather than left running.
	conn2, err := pgx.Connect(context.Background(), sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(context.Background())
	waitFor(t, 10*time.Second, func() bool {
		var n int
		conn2.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").Scan(&n)
		return n == 0
	})

	// The same with pgconn's explicit cancel, connection kept.
	pc := conn2.PgConn()
	done := make(chan error, 1)
	go func() { _, err := pc.Exec(context.Background(), "SELECT pg_sleep(30)").ReadAll(); done <- err }()
	time.Sleep(200 * time.Millisecond)
	if err := pc.CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Fatalf("want query_canceled, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not arrive")
	}
	var one int
	if err := conn2.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("connection unusable after cancel: %v", err)
	}
}

// TestListenNotify: notifications reach a client idle behind the sidecar.
func TestListenNotify(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener, err := pgx.Connect(ctx, sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN events"); err != nil {
		t.Fatal(err)
	}
	notifier := pg.Connect(t, db)
	for i := range 3 {
		if _, err := notifier.Exec(ctx, "SELECT pg_notify('events', $1)", strings.Repeat("x", i*1000)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel != "events" || len(n.Payload) != i*1000 {
			t.Fatalf("notification %d: %+v", i, n)
		}
	}
}

// TestAuthentication: password, md5 and SCRAM users are judged by Postgres
// through the sidecar; a wrong password is refused with Postgres's error.
func TestAuthentication(t *testing.T) {
	db := pg.CreateDB(t)
	admin := pg.Connect(t, "postgres")
	ctx := context.Background()
	for _, stmt := range []string{
		"DROP ROLE IF EXISTS md5user", "DROP ROLE IF EXISTS scramuser", "DROP ROLE IF EXISTS pwuser",
		"SET password_encryption = 'md5'", "CREATE ROLE md5user LOGIN PASSWORD 'md5 secret'",
		"SET password_encryption = 'scram-sha-256'", "CREATE ROLE scramuser LOGIN PASSWORD 'scram secret'",
		"CREATE ROLE pwuser LOGIN PASSWORD 'plain secret'",
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	sc := startSidecar(t, db)
	for _, c := range []struct{ user, password string }{
		{"md5user", "md5 secret"}, {"scramuser", "scram secret"}, {"pwuser", "plain secret"},
	} {
		t.Run(c.user, func(t *testing.T) {
			url := strings.Replace(sc.url(db, c.user), c.user+"@", c.user+":"+strings.ReplaceAll(c.password, " ", "%20")+"@", 1)
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatalf("right password refused: %v", err)
			}
			var who string
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != c.user {
				t.Fatalf("current_user = %q, %v", who, err)
			}
			conn.Close(ctx)
			bad := strings.Replace(sc.url(db, c.user), c.user+"@", c.user+":wrong@", 1)
			_, err = pgx.Connect(ctx, bad)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Fatalf("wrong password: want 28P01, got %v", err)
			}
		})
	}
}

// TestTLSToSidecar: clients can require TLS to the sidecar, and SCRAM works
// over it (the sidecar does not offer channel binding it cannot honour).
func TestTLSToSidecar(t *testing.T) {
	db := pg.CreateDB(t)
	admin := pg.Connect(t, "postgres")
	ctx := context.Background()
	admin.Exec(ctx, "DROP ROLE IF EXISTS scramuser")
	if _, err := admin.Exec(ctx, "CREATE ROLE scramuser LOGIN PASSWORD 'scram secret'"); err != nil {
		t.Fatal(err)
	}
	cert, key := selfSignedCert(t)
	sc := startSidecar(t, db, "--tls-cert", cert, "--tls-key", key)
	url := strings.Replace(sc.url(db, "scramuser"), "scramuser@", "scramuser:scram%20secret@", 1)
	url = strings.Replace(url, "sslmode=disable", "sslmode=require", 1)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("connection is not TLS: %T", conn.PgConn().Conn())
	}
	var v string
	if err := conn.QueryRow(ctx, "SELECT rejot.version()").Scan(&v); err != nil {
		t.Fatal(err)
	}
	// psql with TLS required, too.
	out := psql(t, url, "\\conninfo\n")
	if !strings.Contains(out, "SSL connection (protocol: TLS") {
		t.Errorf("psql did not use TLS:\n%s", out)
	}
}

func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// TestUnreachableUpstream: a client of a sidecar whose database is down
// gets a FATAL error that says so.
func TestUnreachableUpstream(t *testing.T) {
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := startSidecarUpstream(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/nowhere?sslmode=disable", port))
	_, err = pgx.Connect(context.Background(), s.url("nowhere", "postgres"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "cannot connect to the upstream database") {
		t.Fatalf("want FATAL 08006, got %v", err)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("condition not met within %v", d)
}
