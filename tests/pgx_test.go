package tests

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var execModes = map[string]pgx.QueryExecMode{
	"cache_statement": pgx.QueryExecModeCacheStatement,
	"cache_describe":  pgx.QueryExecModeCacheDescribe,
	"describe_exec":   pgx.QueryExecModeDescribeExec,
	"exec":            pgx.QueryExecModeExec,
	"simple_protocol": pgx.QueryExecModeSimpleProtocol,
}

func connectMode(t *testing.T, url string, mode pgx.QueryExecMode, notices *[]string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	if notices != nil {
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			*notices = append(*notices, n.Severity+": "+n.Message)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, cfg.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	// ConnString loses the exec mode and hooks: reconnect with the config.
	conn.Close(ctx)
	conn, err = pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// transcript runs the same workload on a connection and records everything
// a client can observe, so runs against Postgres and through the sidecar
// can be compared as strings.
func transcript(t *testing.T, conn *pgx.Conn, notices *[]string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	rec := func(label string, v ...any) { fmt.Fprintf(&b, "%s: %v\n", label, fmt.Sprint(v...)) }
	errText := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return fmt.Sprintf("%s %s %s pos=%d detail=%q hint=%q", pe.Severity, pe.Code, pe.Message, pe.Position, pe.Detail, pe.Hint)
		}
		if err != nil {
			return "error " + err.Error()
		}
		return "ok"
	}
	queryAll := func(label, q string, args ...any) {
		rows, err := conn.Query(ctx, q, args...)
		if err != nil {
			rec(label, errText(err))
			return
		}
		for rows.Next() {
			vals, err := rows.Values()
			rec(label+" row", fmt.Sprintf("%#v", vals), errText(err))
		}
		fields := []string{}
		for _, f := range rows.FieldDescriptions() {
			fields = append(fields, fmt.Sprintf("%s/%d/%d", f.Name, f.DataTypeOID, f.Format))
		}
		rec(label+" fields", strings.Join(fields, ","))
		rec(label+" end", errText(rows.Err()), " tag=", rows.CommandTag().String())
	}
	queryAll("types", `SELECT 1::int4 AS i, 'x'::text AS t, NULL::text AS n, ''::text AS e, 1.50::numeric(10,2) AS num,
		'2024-01-02 03:04:05.123456+00'::timestamptz AS ts, '\x00ff'::bytea AS by, ARRAY[1,NULL,3]::int[] AS arr,
		'{"a":[1,2.5]}'::jsonb AS j, 'NaN'::float8 AS nan, 'infinity'::timestamptz AS inf, true AS b`)
	queryAll("params", "SELECT $1::int + $2::int, $3::text", 3, 4, "three")
	queryAll("series", "SELECT count(*), sum(g) FROM generate_series(1, 5000) g")
	queryAll("many", "SELECT g, repeat('x', g % 50) FROM generate_series(1, 300) g")
	queryAll("undefined table", "SELECT * FROM nope")
	queryAll("division", "SELECT 1/0")
	queryAll("syntax", "SELEC 1")
	_, err := conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)")
	rec("create", errText(err))
	_, err = conn.Exec(ctx, "DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
	rec("notice", errText(err), " ", strings.Join(*notices, "|"))

	tx, err := conn.Begin(ctx)
	rec("begin", errText(err), " status=", string(conn.PgConn().TxStatus()))
	_, err = tx.Exec(ctx, "INSERT INTO items VALUES (1, 'a')")
	rec("insert in tx", errText(err))
	_, err = tx.Exec(ctx, "INSERT INTO items VALUES (1, 'dup')")
	rec("duplicate", errText(err), " status=", string(conn.PgConn().TxStatus()))
	rec("rollback", errText(tx.Rollback(ctx)), " status=", string(conn.PgConn().TxStatus()))

	batch := &pgx.Batch{}
	batch.Queue("INSERT INTO items VALUES (2, 'b')")
	batch.Queue("SELECT count(*) FROM items")
	batch.Queue("INSERT INTO items VALUES (3, 'c')")
	br := conn.SendBatch(ctx, batch)
	for i := 0; i < batch.Len(); i++ {
		_, err := br.Exec()
		rec(fmt.Sprintf("batch %d", i), errText(err))
	}
	rec("batch close", errText(br.Close()))

	n, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name"},
		pgx.CopyFromRows([][]any{{10, "ten"}, {11, nil}, {12, "twelve\ttab"}}))
	rec("copy from", n, " ", errText(err))
	var out strings.Builder
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
	rec("copy to", tag.String(), " ", errText(err), " ", fmt.Sprintf("%q", out.String()))

	sd, err := conn.Prepare(ctx, "by_id", "SELECT name FROM items WHERE id = $1")
	rec("prepare", errText(err), " ", len(sd.Fields))
	queryAll("prepared", "by_id", 12)
	queryAll("final", "SELECT id, name FROM items ORDER BY id")
	return b.String()
}

// TestPgxConformance runs one workload with pgx in every query mode straight
// against Postgres and through the sidecar: the transcripts must match.
func TestPgxConformance(t *testing.T) {
	for name, mode := range execModes {
		t.Run(name, func(t *testing.T) {
			direct, proxied := pg.CreateDB(t), pg.CreateDB(t)
			sc := startSidecar(t, proxied)
			var n1, n2 []string
			want := transcript(t, connectMode(t, directURL(direct, "postgres"), mode, &n1), &n1)
			got := transcript(t, connectMode(t, sc.url(proxied, "postgres"), mode, &n2), &n2)
			if got != want {
				t.Errorf("through the sidecar:\n%s\ndirect:\n%s", got, want)
			}
		})
	}
}

// TestPgxRejotVersion: every query mode gets the sidecar's version from
// each form of the call.
func TestPgxRejotVersion(t *testing.T) {
	out, err := exec.Command(rejotBin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(out))
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	for name, mode := range execModes {
		t.Run(name, func(t *testing.T) {
			conn := connectMode(t, sc.url(db, "postgres"), mode, nil)
			ctx := context.Background()
			for _, q := range []string{"SELECT rejot.version()", "CALL rejot.version()", "select * from rejot.version()",
				"SELECT rejot.version() AS v", "  /* comment */ SELECT Rejot.Version() ;"} {
				var got string
				if err := conn.QueryRow(ctx, q).Scan(&got); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				if got != want {
					t.Errorf("%s = %q, want %q", q, got, want)
				}
			}
			rows, _ := conn.Query(ctx, "SELECT rejot.version() AS v")
			rows.Next()
			if f := rows.FieldDescriptions(); len(f) != 1 || f[0].Name != "v" || f[0].DataTypeOID != 25 {
				t.Errorf("fields = %+v", f)
			}
			rows.Close()
			if rows.CommandTag().String() != "SELECT 1" {
				t.Errorf("tag = %q", rows.CommandTag())
			}
			_, err := conn.Exec(ctx, "SELECT rejot.nope(1)")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42883" || !strings.Contains(pe.Hint, "rejot.version()") {
				t.Errorf("unknown function: %v", err)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Errorf("after the error: %v", err)
			}
		})
	}
}
