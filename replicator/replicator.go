// Package replicator moves data: it captures what changes in an owner's
// tables as changes to its publication versions, keeps them in the event
// log, and applies them to subscribers' tables. This file holds the domain
// types the parts share; the Postgres event log is in pglog.
package replicator

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"
)

// Op is what a change does to a publication version's rows.
type Op byte

const (
	OpUpsert   Op = 'u' // the row with Key is now Row
	OpDelete   Op = 'd' // the row with Key is gone
	OpTruncate Op = 't' // every row is gone
)

// Value is a column value in Postgres's text form; nil is NULL. Text form
// keeps every value exact (numeric scale, timestamps, bytea as hex, NaN
// and infinities), and NULL stays distinct from the empty string.
type Value = *string

// Change is one change to a publication version's rows.
type Change struct {
	Op  Op
	Key []Value // the public key's values
	Row []Value // every public column, for upserts
}

// Stream names a publication version: one ordered log and one compacted
// state each.
type Stream struct {
	Publication string
	Version     int
}

// Layout is how a publication version's rows are laid out: how many
// values a row has and which of them, in key order, are its public key
// (the source table's primary key, which a publication always includes
// as plain columns). The log keys its compacted state by those values.
type Layout struct {
	Columns int
	Key     []int
}

// Group is what one source transaction changed in one publication
// version: the unit that is appended once and applied atomically.
type Group struct {
	Stream     Stream
	System     string // the owner's system: with CommitLSN, what makes an append idempotent
	CommitLSN  uint64
	CommitTime time.Time
	Layout     Layout
	Changes    []Change
}

// Record is a change as the log holds it.
type Record struct {
	Position   int64
	CommitLSN  uint64
	CommitTime time.Time
	Change
}

// Kept changes the out-of-line values kept for a source table's rows.
// The WAL leaves out a value stored out of line (TOAST) when an update
// does not change it; the capture keeps the last value it saw of every
// such column a projection reads, so it can project that update exactly as
// of its transaction, without REPLICA IDENTITY FULL.
type Kept struct {
	Table string  // the source table, schema.table
	Key   []Value // the row's replica identity; nil with Gone: every row
	// Values are the columns to keep (merged with what is kept already).
	Values map[string]Value
	Gone   bool // the row (without Key: every row of the table) is gone
	// Missing keeps Values only where nothing is kept yet (a first fill
	// must not overwrite values newer than its snapshot).
	Missing bool
}

// Log is the event log.
type Log interface {
	// Begin starts an append: what a LogTx appends becomes visible, and
	// durable, at once when it commits.
	Begin(ctx context.Context) (LogTx, error)
	// Filled returns the point at which a system last filled a stream's
	// state and the definition it filled it with; ok is false when it
	// never did.
	Filled(ctx context.Context, s Stream, system string) (lsn uint64, definition string, ok bool, err error)
}

// LogTx is one append to the log, possibly in parts.
type LogTx interface {
	// Append appends groups in order. Groups already in the log (same
	// stream, system and commit LSN) are skipped, and a group with the
	// same identity as one appended earlier in this LogTx continues it:
	// a large source transaction arrives in parts.
	Append(ctx context.Context, groups []Group) error
	// Fill appends part of a version's first state (a truncate, then an
	// upsert per row): the log may keep only its compacted state when no
	// subscriber reads the version yet.
	Fill(ctx context.Context, g Group) error
	// Keep records out-of-line values, in order.
	Keep(ctx context.Context, system string, kept []Kept) error
	// Recall returns the values kept for rows of a source table, by the
	// key's encoding (KeyString).
	Recall(ctx context.Context, system, table string, keys [][]Value) (map[string]map[string]Value, error)
	// SetFilled records that the append fills a stream's state, with
	// definition, as of lsn.
	SetFilled(ctx context.Context, s Stream, system, definition string, lsn uint64) error
	// Commit makes the append visible and returns how many groups were new.
	Commit(ctx context.Context) (int, error)
	// Rollback abandons the append; harmless after Commit.
	Rollback(ctx context.Context) error
}

// FillCopier is a LogTx that can take a first state as COPY data, which
// then passes from the owner's server to the log's without being decoded:
// FillStart says whether it can (nobody reads the version yet); FillCopy
// reads rows in COPY's text format, one column per value of the group's
// Layout; FillEnd records the group.
type FillCopier interface {
	FillStart(ctx context.Context, g Group) (ok bool, err error)
	FillCopy(ctx context.Context, g Group, r io.Reader) (rows int64, err error)
	FillEnd(ctx context.Context, g Group, rows int64) error
}

// KeyString encodes a key's values as one comparable string.
func KeyString(key []Value) string {
	var b strings.Builder
	for _, v := range key {
		if v == nil {
			b.WriteString("n;")
			continue
		}
		b.WriteString(strconv.Itoa(len(*v)))
		b.WriteByte(':')
		b.WriteString(*v)
		b.WriteByte(';')
	}
	return b.String()
}

// Append appends groups in one LogTx.
func Append(ctx context.Context, l Log, groups []Group) (int, error) {
	tx, err := l.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := tx.Append(ctx, groups); err != nil {
		return 0, err
	}
	return tx.Commit(ctx)
}

// LogReader is the event log as subscribers read it.
type LogReader interface {
	// CopyState writes the compacted state in COPY's text format, the
	// given elements of each row as columns, and returns its position.
	CopyState(ctx context.Context, s Stream, elements []int, w io.Writer) (int64, error)
	// Head is a stream's last position.
	Head(ctx context.Context, s Stream) (int64, error)
	// Read calls fn with a span's changes, in order, in chunks.
	Read(ctx context.Context, s Stream, span Span, fn func([]Record) error) error
	// Fetch is the span of whole groups after a position, up to about
	// limit changes (at least one group, however large), with its
	// changes; the changes are nil when the span's first group alone is
	// larger than limit (Read them as they are applied).
	Fetch(ctx context.Context, s Stream, after int64, limit int) (Span, []Record, error)
	// Wait returns when an append to s is notified, or after at most d.
	Wait(ctx context.Context, s Stream, d time.Duration)
	// SetReader records a subscriber's position, so the log keeps what
	// it has not read; a negative position forgets the reader.
	SetReader(ctx context.Context, s Stream, reader string, position int64) error
	// KeepReaders forgets the readers named prefix… except those in keep.
	KeepReaders(ctx context.Context, prefix string, keep []string) error
}

// ErrPruned: the log no longer holds changes a subscriber needs (they
// were never kept, as for a first state nobody read, or were pruned); the
// subscriber copies the compacted state again.
var ErrPruned = errors.New("the event log no longer holds these changes")

// Span is a run of whole groups of a stream: positions (After, Upto].
type Span struct {
	After, Upto int64
	Groups      int
	LastCommit  time.Time // commit time of the span's last group
}
