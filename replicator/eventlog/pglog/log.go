// Package pglog is the event log kept in Postgres: per publication version
// an ordered change log and the compacted state (a table per version,
// compacted from the change log in bulk; reads fold in what is not
// compacted yet), so a new subscriber copies the state at a position and
// streams from there without touching the owner's database. Appends
// notify listeners on the channel rejot_log. docs/capture.md has the
// layout and the reasons.
//
// The files follow the log's concerns: log.go opens the log and holds what
// it remembers of earlier appends; append.go appends groups, each source
// transaction's changes to one version, in one transaction; fill.go
// records first states; state.go makes, fills and reads the state tables;
// kept.go keeps out-of-line (TOAST) values; base.go the base states of
// join versions; encode.go and decode.go render
// and parse values for COPY and JSON; read.go serves the changes, prune.go
// the readers' positions and the changes they let go, notify.go the
// wake-ups. The stored schema calls a version a stream (rejot_log.streams,
// the column stream): those names stay, the code says version.
package pglog

import (
	"context"
	"embed"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/migrate"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

//go:embed migrations/*.sql
var files embed.FS

var migrations = migrate.Set{Files: files, Dir: "migrations", Table: "rejot_log.schema_migrations"}

// Channel is the LISTEN channel appends notify; the payload is
// "<publication>/<version>/<head position>".
const Channel = "rejot_log"

// Log is an open event log.
type Log struct {
	pool       *pgxpool.Pool
	ctx        context.Context // ends when the log closes
	cancel     context.CancelFunc
	notifyOnce sync.Once
	notify     *notifier
	listening  sync.WaitGroup // the notifier's listen, which Close ends

	// What appends learned of versions, so the next one need not ask: a
	// version's id and state layout, and the last commit LSN each system
	// appended to it. Only committed facts go in; an append that fails
	// makes the log forget (its commit may or may not have happened).
	mu    sync.Mutex
	known map[eventlog.Version]*knownVersion
}

type knownVersion struct {
	id       int
	layout   eventlog.Layout
	appended map[string]uint64
}

// learn records committed facts about a version.
func (l *Log) learn(v eventlog.Version, id int, layout *eventlog.Layout, system string, lsn uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.known == nil {
		l.known = map[eventlog.Version]*knownVersion{}
	}
	k := l.known[v]
	if k == nil || k.id != id {
		k = &knownVersion{id: id, appended: map[string]uint64{}}
		l.known[v] = k
	}
	if layout != nil {
		k.layout = eventlog.Layout{Columns: layout.Columns, Key: slices.Clone(layout.Key)}
	}
	if system != "" {
		k.appended[system] = max(k.appended[system], lsn)
	}
}

// Forget drops what appends remembered: the next ones ask the log. A
// publisher calls it when it starts (another process may have appended
// for its system since), and an append whose commit failed does (the
// commit may or may not have happened).
func (l *Log) Forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known = nil
}

// forgetVersion drops what appends remembered of one version.
func (l *Log) forgetVersion(v eventlog.Version) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.known, v)
}

// knownAppended is the last commit LSN system appended to v, if known.
func (l *Log) knownAppended(v eventlog.Version, system string) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := l.known[v]; k != nil {
		lsn, ok := k.appended[system]
		return lsn, ok
	}
	return 0, false
}

var _ eventlog.Log = (*Log)(nil)

// Open connects to the event log at url and migrates its schema.
func Open(ctx context.Context, url string) (*Log, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("cannot open the event log: %w", err)
	}
	// The slot is confirmed once an append commits, and a subscriber's
	// position lets changes go: commits must be durable by then,
	// whatever the server's default.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot open the event log: %w", err)
	}
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return migrations.Run(ctx, c.Conn()) })
	if err != nil {
		pool.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Log{pool: pool, ctx: ctx, cancel: cancel}, nil
}

// Close closes the log's connections, once the notifier's listen (if
// Wait started it) has ended.
func (l *Log) Close() {
	l.cancel()
	l.listening.Wait()
	l.pool.Close()
}

// Ping checks that the log's database answers.
func (l *Log) Ping(ctx context.Context) error { return l.pool.Ping(ctx) }
