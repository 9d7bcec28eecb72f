package tests

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// psql runs a script with psql against url and returns what it printed
// (stdout and stderr in one stream, as a user sees it).
func psql(t *testing.T, url, script string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"-X", "-a", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=default", url}, extra...)
	cmd := exec.CommandContext(ctx, psqlBin, args...)
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(cmd.Environ(), "PGCLIENTENCODING=UTF8", "PAGER=")
	out, err := cmd.CombinedOutput()
	if err != nil && ctx.Err() != nil {
		t.Fatalf("psql timed out: %s", out)
	}
	return string(out)
}

const conformanceScript = `CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t VALUES (1, 'a'), (2, 'b');
SELECT 1 AS one \; SELECT 2 AS two \; SELECT 'three' AS three;
SELECT 1 \; SELECT * FROM nope \; SELECT 3;
SELECT id, missing FROM t;
SELECT 'é' AS accent, id, missing2 FROM t;
DO $$BEGIN RAISE NOTICE 'note %', 1; END$$;
\copy t FROM stdin
3	c
4	\N
\.
\copy (SELECT * FROM t ORDER BY id) TO stdout
COPY t TO STDOUT WITH (FORMAT csv, HEADER);
BEGIN;
SELECT 1/0;
SELECT 1;
ROLLBACK;
INSERT INTO t VALUES (5, 'e') \; INSERT INTO t VALUES (1, 'dup') \; INSERT INTO t VALUES (6, 'f');
SELECT * FROM t ORDER BY id;
LISTEN ch;
NOTIFY ch, 'payload';
SHOW server_version_num;
SET application_name = 'conformance';
SHOW application_name;
\echo done
`

// TestPsqlConformance: the same psql script, straight to Postgres and
// through the sidecar, prints the same thing — multi-statement strings,
// errors with positions, notices, \copy both ways, aborted transactions.
func TestPsqlConformance(t *testing.T) {
	db1, db2 := pg.CreateDB(t), pg.CreateDB(t)
	sc := startSidecar(t, db2)
	want := psql(t, directURL(db1, "postgres"), conformanceScript)
	got := psql(t, sc.url(db2, "postgres"), conformanceScript)
	// The NOTIFY line names the backend's pid, which differs.
	want, got = maskPIDs(want), maskPIDs(got)
	if got != want {
		t.Errorf("through the sidecar:\n%s\ndirect:\n%s", got, want)
	}
	for _, must := range []string{"LINE 1: SELECT id, missing FROM t;", "NOTICE:  note 1", "4\t\\N", "done", "current transaction is aborted"} {
		if !strings.Contains(got, must) {
			t.Errorf("output lacks %q:\n%s", must, got)
		}
	}
}

func maskPIDs(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "Asynchronous notification") {
			if j := strings.Index(l, "server process with PID"); j >= 0 {
				lines[i] = l[:j] + "server process with PID N."
			}
		}
	}
	return strings.Join(lines, "\n")
}

const rejotScript = `SELECT rejot.version() AS has_version;
CREATE TABLE kept (id int) \; SELECT rejot.version() \; INSERT INTO kept VALUES (1);
SELECT 'x' \; SELECT count(*) AS kept_rows FROM kept;
CREATE TABLE gone (id int) \; INSERT INTO gone VALUES (1) \; CALL rejot.nope('x');
SELECT to_regclass('gone') IS NULL AS gone_is_gone;
SELECT 1 \; SELECT rejot.versio();
BEGIN;
SELECT 1/0;
SELECT rejot.version();
ROLLBACK;
SELECT 2 + rejot.version();
\echo done
`

// TestPsqlRejotCalls: the sidecar's answers as psql shows them.
func TestPsqlRejotCalls(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	got := psql(t, sc.url(db, "postgres"), rejotScript)
	for _, must := range []string{
		"has_version \n-------------\n 0.1.0-dev",
		"kept_rows \n-----------\n         1",
		"ERROR:  function rejot.nope(unknown) does not exist",
		"gone_is_gone \n--------------\n t",
		"ERROR:  function rejot.versio() does not exist\nLINE 1: SELECT 1 ; SELECT rejot.versio();\n                          ^",
		"ERROR:  current transaction is aborted, commands ignored until end of transaction block",
		"ERROR:  rejot.version() must be called on its own",
		"done",
	} {
		if !strings.Contains(got, must) {
			t.Errorf("output lacks %q:\n%s", must, got)
		}
	}
}
