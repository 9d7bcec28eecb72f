package tests

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
)

// natsLog: with REJOT_TEST_LOG=nats every sidecar a test starts keeps its
// event log in a three-node JetStream cluster of that test's own,
// in-process, instead of in the catalog (make test runs the data-path
// suites so as well as on Postgres).
var natsLog = os.Getenv("REJOT_TEST_LOG") == "nats"

type natsTestLog struct {
	cluster *natstest.Cluster
	once    sync.Once
	log     *natslog.Log
	err     error
}

var natsLogs sync.Map // top-level test name → *natsTestLog

// natsFor is the JetStream cluster of the test t belongs to, started on
// first use and stopped when the test ends (after its sidecars).
func natsFor(t *testing.T) *natsTestLog {
	t.Helper()
	return natsStarted(t, natstest.Start)
}

// natsStarted is natsFor with the cluster started by start: in-process
// servers, or OS processes (natstest.StartProcesses) for a test that
// kills one.
func natsStarted(t *testing.T, start func(n int, dir string) (*natstest.Cluster, error)) *natsTestLog {
	t.Helper()
	name, _, _ := strings.Cut(t.Name(), "/")
	if l, ok := natsLogs.Load(name); ok {
		return l.(*natsTestLog)
	}
	c, err := start(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := &natsTestLog{cluster: c}
	natsLogs.Store(name, l)
	t.Cleanup(func() {
		natsLogs.Delete(name)
		if l.log != nil {
			l.log.Close()
		}
		c.Shutdown()
	})
	return l
}

// logArgs adds --log for the test's JetStream cluster when the suites run
// against NATS and the sidecar is not given a log already.
func logArgs(t *testing.T, extra []string) []string {
	if !natsLog || slices.Contains(extra, "--log") {
		return extra
	}
	return append(slices.Clone(extra), "--log", natsFor(t).cluster.URL())
}

// natsReader opens the test's NATS log for the test itself to look at.
func (l *natsTestLog) reader(t *testing.T) *natslog.Log {
	t.Helper()
	l.once.Do(func() { l.log, l.err = natslog.Open(context.Background(), l.cluster.URL()) })
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l.log
}

// logHead is the head of version 1 of a publication in the event log
// (on Postgres, logDB's).
func logHead(t *testing.T, logDB *pgx.Conn, publication string) int64 {
	t.Helper()
	var head int64
	if natsLog {
		head, _ = natsFor(t).reader(t).Head(t.Context(), eventlog.Version{Publication: publication, Number: 1})
		return head
	}
	logDB.QueryRow(t.Context(), "SELECT head FROM rejot_log.streams WHERE publication = $1", publication).Scan(&head)
	return head
}

// logReaders names the readers of a publication's versions, sorted,
// comma-separated.
func logReaders(t *testing.T, logDB *pgx.Conn, publication string) string {
	t.Helper()
	if natsLog {
		readers, _ := natsFor(t).reader(t).Readers(t.Context(), eventlog.Version{Publication: publication, Number: 1})
		var names []string
		for r := range readers {
			names = append(names, r)
		}
		slices.Sort(names)
		return strings.Join(names, ",")
	}
	var readers string
	logDB.QueryRow(t.Context(), `SELECT coalesce(string_agg(r.reader, ',' ORDER BY r.reader), '') FROM rejot_log.readers r
		JOIN rejot_log.streams s ON s.id = r.stream WHERE s.publication = $1`, publication).Scan(&readers)
	return readers
}
