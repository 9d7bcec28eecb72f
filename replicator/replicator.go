// Package replicator moves data: it captures what changes in an owner's
// tables as changes to its publication versions, keeps them in the event
// log, and applies them to subscribers' tables. This file holds the domain
// types the parts share; the Postgres event log is in pglog.
package replicator

import (
	"context"
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

// Group is what one source transaction changed in one publication
// version: the unit that is appended once and applied atomically.
type Group struct {
	Stream     Stream
	System     string // the owner's system: with CommitLSN, what makes an append idempotent
	CommitLSN  uint64
	CommitTime time.Time
	Changes    []Change
}

// Record is a change as the log holds it.
type Record struct {
	Position   int64
	CommitLSN  uint64
	CommitTime time.Time
	Change
}

// Log is the event log.
type Log interface {
	// Append appends the groups of one source transaction, atomically;
	// groups already appended (same stream, system and commit LSN) are
	// skipped. It returns how many were new.
	Append(ctx context.Context, groups []Group) (int, error)
	// Since returns the commit LSN of the first group a system appended
	// to a stream; ok is false when it appended none.
	Since(ctx context.Context, s Stream, system string) (lsn uint64, ok bool, err error)
}
