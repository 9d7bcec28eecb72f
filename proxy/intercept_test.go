package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/sql"
)

// testFunctions adds API functions that exercise what later functions rely
// on: parameters and typed results (echo), and queries through the caller's
// own session (query).
func testFunctions(srv *Server) {
	srv.Executor.Register(&sql.Function{
		Name:    "echo",
		Params:  []sql.Param{{Name: "n", Type: sql.OIDInt4}, {Name: "label", Type: sql.OIDText, Optional: true}},
		Returns: []sql.Column{{Name: "n", TypeOID: sql.OIDInt4}, {Name: "label", TypeOID: sql.OIDText}},
		Run: func(ctx context.Context, env *sql.Env, args sql.Args) ([][]any, error) {
			n, _, err := args.Int("n")
			if err != nil {
				return nil, err
			}
			var label any
			if v := args["label"]; v != nil {
				label = *v
			}
			return [][]any{{int32(n), label}}, nil
		},
	})
	srv.Executor.Register(&sql.Function{
		Name:    "query",
		Params:  []sql.Param{{Name: "sql", Type: sql.OIDText}},
		Returns: []sql.Column{{Name: "value", TypeOID: sql.OIDText}},
		Run: func(ctx context.Context, env *sql.Env, args sql.Args) ([][]any, error) {
			rows, err := env.Session.Query(ctx, args.Text("sql"))
			if err != nil {
				return nil, err
			}
			var out [][]any
			for _, r := range rows.Values {
				if r[0] == nil {
					out = append(out, []any{nil})
				} else {
					out = append(out, []any{*r[0]})
				}
			}
			return out, nil
		},
	})
}

func connect(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// results flattens a multi-result simple query into tag/value strings.
func results(t *testing.T, c *pgconn.PgConn, query string) ([]string, error) {
	t.Helper()
	rs, err := c.Exec(context.Background(), query).ReadAll()
	var out []string
	for _, r := range rs {
		s := r.CommandTag.String()
		for _, row := range r.Rows {
			for _, v := range row {
				s += "|" + string(v)
			}
		}
		out = append(out, s)
	}
	if err == nil && len(rs) > 0 {
		err = rs[len(rs)-1].Err
	}
	return out, err
}

func tableExists(t *testing.T, db, table string) bool {
	t.Helper()
	var ok bool
	pg.Connect(t, db).QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok)
	return ok
}

func TestSimpleQueryMixesCallsAndSQL(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	got, err := results(t, c, "CREATE TABLE a (id int); SELECT rejot.version(); INSERT INTO a VALUES (1); CALL rejot.echo(7, 'x'); SELECT count(*) FROM a")
	want := []string{"CREATE TABLE", "SELECT 1|test-version", "INSERT 0 1", "CALL|7|x", "SELECT 1|1"}
	if err != nil || !equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if c.TxStatus() != 'I' || !tableExists(t, db, "a") {
		t.Fatalf("status %c, table committed: %v", c.TxStatus(), tableExists(t, db, "a"))
	}
}

func TestFailedCallRollsBackTheQueryString(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	got, err := results(t, c, "CREATE TABLE b (id int); SELECT rejot.nope(); CREATE TABLE c (id int)")
	if pgCode(err) != "42883" || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	if tableExists(t, db, "b") || tableExists(t, db, "c") {
		t.Fatal("statements around the failed call were not rolled back")
	}
	// An argument that does not convert fails the same way.
	if _, err := results(t, c, "CREATE TABLE b (id int); CALL rejot.echo('x')"); pgCode(err) != "22P02" || tableExists(t, db, "b") {
		t.Fatalf("bad argument: %v", err)
	}
	// An ordinary failure before a call skips the call.
	got, err = results(t, c, "SELECT 1/0; SELECT rejot.version()")
	if pgCode(err) != "22012" || len(got) > 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	if c.TxStatus() != 'I' {
		t.Fatalf("status %c", c.TxStatus())
	}
}

func TestCallsInTransactionBlocks(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	steps := []struct {
		query  string
		code   string
		status byte
	}{
		{"BEGIN", "", 'T'},
		{"CREATE TABLE d (id int)", "", 'T'},
		{"SELECT rejot.version()", "", 'T'},
		{"SELECT rejot.missing()", "42883", 'E'},
		{"SELECT rejot.version()", "25P02", 'E'},
		{"SELECT 1", "25P02", 'E'},
		{"ROLLBACK", "", 'I'},
		{"SELECT rejot.version()", "", 'I'},
		{"BEGIN; SELECT 1/0", "22012", 'E'},
		{"ROLLBACK; SELECT rejot.version()", "", 'I'},
		{"BEGIN; SAVEPOINT s; SELECT 1/0", "22012", 'E'},
		{"ROLLBACK TO SAVEPOINT s; SELECT rejot.version()", "", 'T'},
		{"COMMIT", "", 'I'},
	}
	for _, st := range steps {
		_, err := results(t, c, st.query)
		if pgCode(err) != st.code || c.TxStatus() != st.status {
			t.Fatalf("%s: error %v, status %c; want code %q, status %c", st.query, err, c.TxStatus(), st.code, st.status)
		}
	}
	if tableExists(t, db, "d") {
		t.Fatal("table of the rolled back transaction exists")
	}
}

func TestErrorPositionsMatchPostgres(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	proxied := connect(t, url)
	direct := connect(t, pg.URL(db))
	for _, q := range []string{
		"SELECT rejot.version(); SELECT nocolumn FROM pg_class",
		"SELECT 'ünïcödé'; SELECT rejot.version(); SELECT 'é' || nocolumn FROM pg_class",
	} {
		_, perr := results(t, proxied, q)
		// Directly, the same string without the call.
		_, derr := results(t, direct, stripCall(q))
		var pp, dp *pgconn.PgError
		if !errors.As(perr, &pp) || !errors.As(derr, &dp) {
			t.Fatalf("%s: %v / %v", q, perr, derr)
		}
		if pp.Position != dp.Position {
			t.Errorf("%s: position %d, direct %d", q, pp.Position, dp.Position)
		}

	}
	_, err := results(t, proxied, "SELECT 'ü'; SELECT rejot.nope()")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Position != int32(len([]rune("SELECT 'ü'; SELECT "))+1) {
		t.Fatalf("call error position: %+v", pe)
	}
}

// stripCall replaces the call with a statement of the same length.
func stripCall(q string) string {
	const call, same = "SELECT rejot.version()", "SELECT 0              "
	for i := 0; i+len(call) <= len(q); i++ {
		if q[i:i+len(call)] == call {
			return q[:i] + same + q[i+len(call):]
		}
	}
	return q
}

func TestExtendedProtocolCalls(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	ctx := context.Background()
	sd, err := c.Prepare(ctx, "s1", "SELECT rejot.echo($1, label => $2)", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.ParamOIDs) != 2 || sd.ParamOIDs[0] != sql.OIDInt4 || sd.ParamOIDs[1] != sql.OIDText ||
		len(sd.Fields) != 2 || sd.Fields[0].DataTypeOID != sql.OIDInt4 {
		t.Fatalf("description: %+v", sd)
	}
	// Binary parameter in, binary and text results out.
	param := binary.BigEndian.AppendUint32(nil, 42)
	res := c.ExecPrepared(ctx, "s1", [][]byte{param, []byte("lbl")}, []int16{1, 0}, []int16{1, 0}).Read()
	if res.Err != nil || len(res.Rows) != 1 || binary.BigEndian.Uint32(res.Rows[0][0]) != 42 || string(res.Rows[0][1]) != "lbl" {
		t.Fatalf("result: %+v", res)
	}
	if res.CommandTag.String() != "SELECT 1" {
		t.Fatalf("tag %q", res.CommandTag)
	}
	if _, err := c.Prepare(ctx, "s1", "SELECT rejot.version()", nil); pgCode(err) != "42P05" {
		t.Fatalf("duplicate statement name: %v", err)
	}
	if err := c.Deallocate(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, "s1", "SELECT 1", nil); err != nil {
		t.Fatalf("name reusable after close: %v", err)
	}
	// Unnamed statements, NULL parameters, unknown functions at Parse.
	res = c.ExecParams(ctx, "CALL rejot.echo($1, $2)", [][]byte{[]byte("5"), nil}, nil, nil, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "5" || res.Rows[0][1] != nil || res.CommandTag.String() != "CALL" {
		t.Fatalf("unnamed: %+v", res)
	}
	res = c.ExecParams(ctx, "SELECT rejot.nope($1)", [][]byte{[]byte("5")}, nil, nil, nil).Read()
	if pgCode(res.Err) != "42883" {
		t.Fatalf("unknown: %v", res.Err)
	}
	if v := queryValue(t, c, "SELECT 1"); v != "1" {
		t.Fatalf("after the errors: %q", v)
	}
}

func TestPipelineWithFailingCall(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "CREATE TABLE p (id int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	pl := c.StartPipeline(ctx)
	pl.SendQueryParams("INSERT INTO p VALUES (1)", nil, nil, nil, nil)
	pl.SendQueryParams("SELECT rejot.echo($1)", [][]byte{[]byte("oops")}, nil, nil, nil)
	pl.SendQueryParams("INSERT INTO p VALUES (2)", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("SELECT rejot.echo(3)", nil, nil, nil, nil)
	pl.SendQueryParams("INSERT INTO p VALUES (3)", nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	var codes []string
	for {
		r, err := pl.GetResults()
		if err != nil {
			codes = append(codes, "err:"+pgCode(err))
			continue
		}
		if r == nil {
			break
		}
		switch r := r.(type) {
		case *pgconn.ResultReader:
			res := r.Read()
			if res.Err != nil {
				codes = append(codes, "err:"+pgCode(res.Err))
			} else {
				codes = append(codes, res.CommandTag.String())
			}
		case *pgconn.PipelineSync:
			codes = append(codes, "sync")
		}
		if len(codes) > 20 {
			break
		}
	}
	pl.Close()
	want := []string{"INSERT 0 1", "err:22P02", "sync", "SELECT 1", "INSERT 0 1", "sync"}
	if !equal(codes, want) {
		t.Fatalf("pipeline results %v, want %v", codes, want)
	}
	if ids := queryValue(t, c, "SELECT string_agg(id::text, ',' ORDER BY id) FROM p"); ids != "3" {
		t.Fatalf("rows %q: the failed batch was not rolled back", ids)
	}
}

func TestCallsQueryThroughTheCallersSession(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	c := connect(t, url)
	// The call sees the caller's uncommitted DDL and its session state.
	got, err := results(t, c, "BEGIN; CREATE TABLE q (id int); INSERT INTO q VALUES (41), (42); SELECT rejot.query('SELECT max(id) FROM q')")
	if err != nil || got[len(got)-1] != "SELECT 1|42" {
		t.Fatalf("got %v, %v", got, err)
	}
	// A failing query fails the call and aborts the transaction.
	if _, err := results(t, c, "SELECT rejot.query('SELECT * FROM nosuch')"); pgCode(err) != "42P01" || c.TxStatus() != 'E' {
		t.Fatalf("failing query: %v, status %c", err, c.TxStatus())
	}
	if _, err := results(t, c, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// The session is clean afterwards: queries run again, and nothing but
	// the running query's own statement is prepared.
	for i := range 3 {
		got, err := results(t, c, "SELECT rejot.query('SELECT string_agg(name, '','') FROM pg_prepared_statements')")
		if err != nil || got[0] != "SELECT 1|rejot_internal" {
			t.Fatalf("run %d: %v, %v", i, got, err)
		}
	}
	if tableExists(t, db, "q") {
		t.Fatal("rolled back table exists")
	}
	// Through the extended protocol, between the client's own statements.
	res := c.ExecParams(context.Background(), "SELECT rejot.query($1)", [][]byte{[]byte("SELECT current_setting('application_name')")}, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 {
		t.Fatalf("extended: %+v", res)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// queryValue runs a query and returns its first value.
func queryValue(t *testing.T, c *pgconn.PgConn, q string) string {
	t.Helper()
	rs, err := c.Exec(context.Background(), q).ReadAll()
	if err != nil || len(rs) == 0 || len(rs[0].Rows) == 0 {
		t.Fatalf("%s: %v", q, err)
	}
	return string(rs[0].Rows[0][0])
}
