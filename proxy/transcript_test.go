package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Protocol transcripts in the spirit of CockroachDB's pgtest: the same
// frontend messages are sent straight to Postgres and through the sidecar,
// and every backend message received must be the same.

type step struct {
	send []pgproto3.FrontendMessage
	// syncs is how many ReadyForQuery messages end the step.
	syncs int
}

func q(sql string) step {
	return step{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}, syncs: 1}
}

func ext(msgs ...pgproto3.FrontendMessage) step {
	n := 0
	for _, m := range msgs {
		if _, ok := m.(*pgproto3.Sync); ok {
			n++
		}
	}
	return step{send: msgs, syncs: n}
}

var transcripts = map[string][]step{
	"simple": {
		q("SELECT 1 AS a, 'x' AS b, NULL AS c"),
		q(""),
		q(";;"),
		q("SELECT 1; SELECT 2; SELECT * FROM nosuch; SELECT 3"),
		q("BEGIN; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')"),
		q("SELECT * FROM t ORDER BY id"),
		q("INSERT INTO t VALUES (1, 'dup')"),
		q("SELECT 1"),
		q("ROLLBACK"),
		q("DO $$BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w1'; END$$"),
		q("SET application_name = 'transcript'; SHOW application_name"),
		q("LISTEN c; NOTIFY c, 'hello'"),
	},
	"extended": {
		ext(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int + 1 AS n, $2::text AS t"},
			&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("41"), nil}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 5) g"},
			&pgproto3.Bind{DestinationPortal: "p"},
			&pgproto3.Execute{Portal: "p", MaxRows: 2},
			&pgproto3.Execute{Portal: "p", MaxRows: 2},
			&pgproto3.Execute{Portal: "p", MaxRows: 2},
			&pgproto3.Close{ObjectType: 'P', Name: "p"},
			&pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "SELECT 1/0"},
			&pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Parse{Query: "SELECT 3"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "SELEC oops"}, &pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: ""}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		ext(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "SELECT nosuch"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		ext(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Sync{}),
		q("ROLLBACK"),
		ext(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Flush{}),
		ext(&pgproto3.Execute{}, &pgproto3.Sync{}),
	},
	"copy": {
		q("CREATE TABLE c (id int, v text)"),
		{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY c FROM STDIN"},
			&pgproto3.CopyData{Data: []byte("1\tone\n2\t\\N\n")}, &pgproto3.CopyDone{}}, syncs: 1},
		{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY c FROM STDIN"},
			&pgproto3.CopyData{Data: []byte("3\tthree\n")}, &pgproto3.CopyFail{Message: "client gave up"}}, syncs: 1},
		{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY c FROM STDIN"},
			&pgproto3.CopyData{Data: []byte("not a number\tx\n")}, &pgproto3.CopyDone{}}, syncs: 1},
		q("COPY c TO STDOUT"),
		q("COPY (SELECT * FROM c ORDER BY id) TO STDOUT WITH (FORMAT binary)"),
		{send: []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "COPY c FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.CopyData{Data: []byte("4\tfour\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}}, syncs: 1},
		q("SELECT count(*) FROM c"),
	},
}

// runTranscript sends the steps over a fresh connection to addr and returns
// every backend message, as JSON, with the per-connection values masked.
func runTranscript(t *testing.T, addr, db string, steps []step) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fe := pgproto3.NewFrontend(conn, conn)
	var out strings.Builder
	record := func(syncs int) {
		for seen := 0; seen < syncs; {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v\nso far:\n%s", err, out.String())
			}
			switch m := msg.(type) {
			case *pgproto3.ReadyForQuery:
				seen++
			case *pgproto3.BackendKeyData:
				msg = &pgproto3.BackendKeyData{}
			case *pgproto3.NotificationResponse:
				m.PID = 0
			case *pgproto3.RowDescription:
				for i := range m.Fields {
					m.Fields[i].TableOID = 0 // each run has its own database
				}
			}
			b, _ := json.Marshal(msg)
			fmt.Fprintf(&out, "%s\n", b)
		}
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": db}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	record(1)
	for _, st := range steps {
		for _, m := range st.send {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		record(st.syncs)
	}
	return out.String()
}

// TestProtocolTranscripts runs each transcript through both relays: the
// event loop and the goroutine relay.
func TestProtocolTranscripts(t *testing.T) {
	for _, loop := range []bool{true, false} {
		for name, steps := range transcripts {
			t.Run(fmt.Sprintf("%s/event_loop=%v", name, loop), func(t *testing.T) {
				testTranscript(t, steps, loop)
			})
		}
	}
}

func testTranscript(t *testing.T, steps []step, loop bool) {
	direct, proxied := pg.CreateDB(t), pg.CreateDB(t)
	_, url := startProxy(t, proxied, func(s *Server) { s.DisableEventLoop = !loop })
	want := runTranscript(t, pg.Addr(), direct, steps)
	got := runTranscript(t, proxyAddr(url), proxied, steps)
	if got != want {
		t.Errorf("transcripts differ at the first line below:\n%s", firstDiff(got, want))
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d\nsidecar: %s\ndirect:  %s", i+1, gl, wl)
		}
	}
	return ""
}
