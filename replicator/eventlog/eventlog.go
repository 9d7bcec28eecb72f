// Package eventlog is the contract between the two sides of ReJot's data
// path: the owner's capture appends what its source transactions changed
// in each publication version, and each subscriber's apply reads it. It
// holds the plain types both sides speak (a publication version, a change,
// a group of changes, positions) and the interface every log engine
// implements (log.go); the Postgres engine is in pglog.
package eventlog

import (
	"errors"
	"fmt"
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

// Version names a publication version: one ordered change log and one
// compacted state (the latest row per key) each.
type Version struct {
	Publication string
	Number      int
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
	Version    Version
	System     string // the owner's system: with CommitLSN, what makes an append idempotent
	CommitLSN  uint64
	CommitTime time.Time
	Layout     Layout
	Changes    []Change
}

// Entry is a change as the log holds it: at its position in the
// version's change log, with its group's commit.
type Entry struct {
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

// ErrPruned: the log no longer holds changes a subscriber needs (they
// were never kept, as for a first state nobody read, or were pruned); the
// subscriber copies the compacted state again.
var ErrPruned = errors.New("the event log no longer holds these changes")

// ErrAhead: a reader asked for the changes after a position past the
// version's head (0 for a version the log does not know). A reader cannot
// be ahead of the log it reads: the log was replaced (another cluster, a
// --log that moved without a resync) or restored from an older backup.
// It is an ErrPruned, so the subscriber copies the state this log holds
// rather than wait for positions that would mean other changes here.
var ErrAhead = fmt.Errorf("the reader's position is past the event log's head (the log was replaced, or restored from an older backup): %w", ErrPruned)

// ErrConcurrentAppend: another process appended for the same system and
// version while an append ran (two captures of one system overlapped);
// the append is abandoned, and appending again from the slot skips what
// the other one appended.
var ErrConcurrentAppend = errors.New("another process appended the same system's transactions meanwhile (two captures of one system overlapped): this append is rolled back and tried again")

// Span is a run of whole groups of a version: positions (After, Upto].
type Span struct {
	After, Upto int64
	Groups      int
	LastCommit  time.Time // commit time of the span's last group
	// Resets: the span's first change is a truncate (a first fill, a
	// TRUNCATE), so the rows after it do not depend on any before: a
	// subscriber may copy the state instead of applying it.
	Resets bool
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
