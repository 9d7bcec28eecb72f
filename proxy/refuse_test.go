package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestRefusedQueryStringAbortsTheTransaction(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	send := func(q string) (status byte, errs []string) {
		b, _ := (&pgproto3.Query{String: q}).Encode(nil)
		conn.Write(b)
		for {
			typ, body := readMsg(t, conn, r)
			switch typ {
			case 'E':
				var e pgproto3.ErrorResponse
				e.Decode(body)
				errs = append(errs, e.Code)
			case 'Z':
				return body[0], errs
			}
		}
	}
	send("CREATE TABLE t (id int)")
	send("BEGIN")
	st, errs := send("COPY t FROM STDIN; SELECT rejot.version()")
	t.Logf("after refused string: errors %v, status %c", errs, st)
	if st != 'E' {
		t.Fatalf("an ERROR inside BEGIN left the transaction usable (status %c); Postgres aborts it", st)
	}
}
