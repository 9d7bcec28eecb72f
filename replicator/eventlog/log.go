package eventlog

import (
	"context"
	"io"
	"time"
)

// Log is an event log engine: every capability either side may use,
// declared here so that an engine knows what to implement and a caller
// never has to discover a feature. The capture uses the Writer half, the
// apply the Reader half.
type Log interface {
	Writer
	Reader
	// Ping checks that the log answers.
	Ping(ctx context.Context) error
	// Close releases the engine's connections.
	Close()
}

// Writer is the event log as the owner's capture writes it.
type Writer interface {
	// Begin starts an append: what a Tx appends becomes visible, and
	// durable, at once when it commits.
	Begin(ctx context.Context) (Tx, error)
	// Filled returns the point at which a system last filled a version's
	// state and the definition it filled it with; ok is false when it
	// never did.
	Filled(ctx context.Context, v Version, system string) (lsn uint64, definition string, ok bool, err error)
	// BaseAt is the commit LSN of the last source transaction a system
	// applied to a join version's base state (PutBase); ok is false when
	// it never did.
	BaseAt(ctx context.Context, v Version, system string) (lsn uint64, ok bool, err error)
	// Forget drops what the engine remembers of earlier appends (which
	// groups it holds, where each version ends): the next appends ask the
	// log. A capture calls it as it starts, since another process may have
	// appended for the system meanwhile (a restart elsewhere, a rolling
	// deploy).
	Forget()
	// Prune drops the changes of a version that every reader has passed,
	// and returns how many it dropped; the compacted state stays, and is
	// what a new subscriber copies.
	Prune(ctx context.Context, v Version) (int64, error)
}

// Tx is one append to the log, possibly in parts.
type Tx interface {
	// Append appends groups in order. Groups already in the log (same
	// version, system and commit LSN) are skipped, and a group with the
	// same identity as one appended earlier in this Tx continues it: a
	// large source transaction arrives in parts.
	Append(ctx context.Context, groups []Group) error
	// Fill appends part of a version's first state (a truncate, then an
	// upsert per row): the log may keep only its compacted state when no
	// subscriber reads the version yet.
	Fill(ctx context.Context, g Group) error
	// FillStart says whether the log takes the first state of g's version
	// as COPY data now (FillCopy, then FillEnd); when it does not (someone
	// reads the version already, or the engine cannot), the capture
	// appends the state with Fill.
	FillStart(ctx context.Context, g Group) (ok bool, err error)
	// FillCopy reads first-state rows in COPY's text format, one column
	// per value of g's Layout, and returns how many it read: the data
	// passes from the owner's server to the log's without being decoded.
	FillCopy(ctx context.Context, g Group, r io.Reader) (rows int64, err error)
	// FillEnd records the group a FillCopy filled, of rows rows.
	FillEnd(ctx context.Context, g Group, rows int64) error
	// Keep records out-of-line values, in order.
	Keep(ctx context.Context, system string, kept []Kept) error
	// Recall returns the values kept for rows of a source table, by the
	// key's encoding (KeyString).
	Recall(ctx context.Context, system, table string, keys [][]Value) (map[string]map[string]Value, error)
	// SetFilled records that the append fills a version's state, with
	// definition, as of lsn.
	SetFilled(ctx context.Context, v Version, system, definition string, lsn uint64) error
	// PutBase writes rows of a join version's base state, in order (a
	// later row of the same table and key replaces an earlier one), and
	// records that the system applied the source transaction that
	// commits at lsn (BaseAt). See base.go.
	PutBase(ctx context.Context, v Version, system string, lsn uint64, rows []BaseRow) error
	// ClearBase empties one table of a join version's base state (a
	// TRUNCATE of it), or every table when table is negative (a first
	// fill).
	ClearBase(ctx context.Context, v Version, table int) error
	// Base returns the rows of one table of a join version's base state
	// that have the given keys, by key; a key without a row is absent.
	Base(ctx context.Context, v Version, table int, keys []string) (map[string][]Value, error)
	// Referrers returns a page of at most limit keys of the rows of
	// table whose Refs for child are among refs (the rows that meet those
	// rows of the joined table; with child negative, refs is ignored and
	// the keys are of every row of table), and the cursor of the next
	// page: start with "", stop when next is "". Pages come in an order
	// of the engine's choosing; over them, each key comes once. Ask for
	// the next page with the same refs and nothing written in between.
	Referrers(ctx context.Context, v Version, table, child int, refs []string, cursor string, limit int) (keys []string, next string, err error)
	// Commit makes the append visible and returns how many groups were new.
	Commit(ctx context.Context) (int, error)
	// Rollback abandons the append; harmless after Commit.
	Rollback(ctx context.Context) error
}

// Reader is the event log as subscribers read it.
type Reader interface {
	// CopyState writes the compacted state in COPY's text format, the
	// given elements of each row as columns, and returns its position.
	CopyState(ctx context.Context, v Version, elements []int, w io.Writer) (int64, error)
	// Head is a version's last position.
	Head(ctx context.Context, v Version) (int64, error)
	// Pending is a version's last position and the commit time of the
	// first change after position after (zero when there is none, or it
	// is pruned): how far a reader there is behind the log's head.
	Pending(ctx context.Context, v Version, after int64) (head int64, oldest time.Time, err error)
	// Width is how many values the rows of a version's state have now (0
	// before its first state): a column a newer minor added is there once
	// the owner has filled the state again with it.
	Width(ctx context.Context, v Version) (int, error)
	// Read calls fn with a span's changes, in order, in chunks.
	Read(ctx context.Context, v Version, span Span, fn func([]Entry) error) error
	// Fetch is the span of whole groups after a position, up to about
	// limit changes (at least one group, however large), with its
	// changes; the changes are nil when the span's first group alone is
	// larger than limit (Read them as they are applied).
	Fetch(ctx context.Context, v Version, after int64, limit int) (Span, []Entry, error)
	// Wait returns when an append to v is notified, or after at most d.
	Wait(ctx context.Context, v Version, d time.Duration)
	// SetReader records a subscriber's position, so the log keeps what
	// it has not read; a negative position forgets the reader.
	SetReader(ctx context.Context, v Version, reader string, position int64) error
	// KeepReaders forgets the readers named prefix… except those in keep.
	KeepReaders(ctx context.Context, prefix string, keep []string) error
}

// Append appends groups in one Tx.
func Append(ctx context.Context, l Writer, groups []Group) (int, error) {
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
