package proxy

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/sql"
	"github.com/rs/zerolog"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

// startProxy runs a Server in front of database db of the package's cluster
// and returns it with the URL clients use; it is closed when the test ends.
func startProxy(t testing.TB, db string, configure ...func(*Server)) (*Server, string) {
	t.Helper()
	up, err := ParseUpstream(pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Upstream: up, Executor: sql.NewExecutor("test-version"), Logger: zerolog.Nop()}
	for _, c := range configure {
		c(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return srv, "postgres://postgres@" + ln.Addr().String() + "/" + db + "?sslmode=disable"
}
