package bench

import (
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Statement statistics (BENCH_STATEMENTS=N): both clusters load
// pg_stat_statements, and after each measured interval the N statements
// that took the most time on each cluster are printed. A diagnostic: it
// costs a little, so leave it off for the figures.

// withStatements adds pg_stat_statements to the clusters' settings when
// asked for.
func withStatements(settings map[string]string, top int) map[string]string {
	if top == 0 {
		return settings
	}
	out := map[string]string{
		"shared_preload_libraries":  "'pg_stat_statements'",
		"pg_stat_statements.track":  "all",
		"pg_stat_statements.max":    "1000",
		"track_activity_query_size": "4096",
	}
	for k, v := range settings {
		out[k] = v
	}
	return out
}

// openStatements installs the extension in each cluster's postgres
// database and keeps a connection to read it.
func (e *env) openStatements() {
	if e.cfg.statements == 0 {
		return
	}
	e.stats = map[string]*pgx.Conn{"owner": connect(e.b, e.owner.URL("postgres")), "consumer": connect(e.b, e.consumer.URL("postgres"))}
	for _, c := range e.stats {
		e.exec(c, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	}
}

func (e *env) resetStatements() {
	for _, c := range e.stats {
		e.exec(c, "SELECT pg_stat_statements_reset()")
	}
}

// printStatements writes the top statements of the interval just measured.
func (e *env) printStatements(what string) {
	for _, side := range []string{"owner", "consumer"} {
		c := e.stats[side]
		if c == nil {
			continue
		}
		rows, err := c.Query(e.ctx, `SELECT d.datname, s.calls, s.total_exec_time, s.rows, regexp_replace(s.query, '\s+', ' ', 'g')
			FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
			WHERE s.query NOT LIKE '%pg_stat_statements%' ORDER BY s.total_exec_time DESC LIMIT $1`, e.cfg.statements)
		e.must(err)
		var b strings.Builder
		fmt.Fprintf(&b, "statements %s, %s's cluster (db, calls, total ms, rows, query):\n", what, side)
		var db, q string
		var calls, n int64
		var total float64
		_, err = pgx.ForEachRow(rows, []any{&db, &calls, &total, &n, &q}, func() error {
			fmt.Fprintf(&b, "  %-8s %8d %10.0f %9d  %.160s\n", db, calls, total, n, q)
			return nil
		})
		e.must(err)
		fmt.Fprint(os.Stderr, b.String())
	}
}
