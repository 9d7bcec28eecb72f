package capture

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// relation is a table as the WAL describes it.
type relation struct {
	schema, table string
	cols          []SourceColumn
	types         []ColumnType // of cols, as the WAL gives them
	key           []bool       // in the replica identity
	varlena       []bool       // variable length: may be stored out of line
	// kept marks the columns whose out-of-line values the log keeps:
	// variable-length, outside the replica identity, read by a projection.
	kept []bool
	// oids and mods are the columns' types and modifiers.
	oids []uint32
	mods []int32
	// now is the table's columns as the catalog had them when the WAL
	// described them; attnums are the WAL's columns' attribute numbers,
	// nil when they are not what the catalog had (see identity.go).
	now     []attribute
	attnums []int16
	// named are the columns as each source names them (columnsFor).
	named map[*Source][]SourceColumn
}

// name is how the log's kept values name the table.
func (r *relation) name() string { return r.schema + "." + r.table }

// keepColumns works out which columns of a table the log keeps values of
// for the sources (see Kept).
func keepColumns(sources []Source, schema, table string, names []string, key, varlena []bool) []bool {
	read := map[string]bool{}
	for _, s := range sources {
		if s.Schema == schema && s.Table == table {
			for _, c := range s.References {
				read[s.nowNamed(c)] = true
			}
		}
	}
	kept := make([]bool, len(names))
	for i, n := range names {
		kept[i] = varlena[i] && !key[i] && read[n]
	}
	return kept
}

func anyTrue(b []bool) bool {
	for _, x := range b {
		if x {
			return true
		}
	}
	return false
}

// event is one row change of a source transaction, values in text form.
type event struct {
	op       byte // 'I', 'U', 'D' or 'T'
	rel      uint32
	old, new []eventlog.Value
	// toasted marks new values the WAL left out (unchanged TOAST).
	toasted []bool
}

// transaction is a decoded source transaction.
type transaction struct {
	commitLSN  uint64
	endLSN     uint64
	commitTime time.Time
	events     []event
	bytes      int // of the events' values
	parts      int // parts already appended (a large transaction)
}

// tupleValues turns a WAL tuple into text values; unchanged TOAST values
// are reported, for the caller to fill. size is the values' bytes.
func tupleValues(t *pglogrepl.TupleData) (vals []eventlog.Value, toasted []bool, size int) {
	if t == nil {
		return nil, nil, 0
	}
	// One allocation for the values' bytes and one for their headers,
	// rather than two per value: a busy capture decodes millions.
	for _, c := range t.Columns {
		size += len(c.Data)
	}
	var b strings.Builder
	b.Grow(size)
	for _, c := range t.Columns {
		b.Write(c.Data)
	}
	all := b.String()
	vals, strs := make([]eventlog.Value, len(t.Columns)), make([]string, len(t.Columns))
	at := 0
	for i, c := range t.Columns {
		switch c.DataType {
		case 't', 'b':
			strs[i] = all[at : at+len(c.Data)]
			vals[i] = &strs[i]
		case 'u':
			if toasted == nil {
				toasted = make([]bool, len(t.Columns))
			}
			toasted[i] = true
		}
		at += len(c.Data)
	}
	return vals, toasted, size
}

func (s *session) decode(ctx context.Context, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		// What was decoded before is projected with the columns it had.
		if err := s.drain(ctx); err != nil {
			return err
		}
		if s.txn != nil && len(s.txn.events) > 0 {
			if err := s.part(ctx); err != nil {
				return err
			}
		}
		return s.relation(ctx, m)
	case *pglogrepl.BeginMessage:
		s.txn = &transaction{commitLSN: uint64(m.FinalLSN), commitTime: m.CommitTime}
	case *pglogrepl.InsertMessage:
		vals, toasted, size := tupleValues(m.Tuple)
		return s.add(ctx, event{op: 'I', rel: m.RelationID, new: vals, toasted: toasted}, size)
	case *pglogrepl.UpdateMessage:
		old, _, oldSize := tupleValues(m.OldTuple)
		vals, toasted, size := tupleValues(m.NewTuple)
		for i, t := range toasted {
			// With REPLICA IDENTITY FULL the old tuple has the value.
			if t && i < len(old) && old[i] != nil {
				vals[i], toasted[i] = old[i], false
			}
		}
		return s.add(ctx, event{op: 'U', rel: m.RelationID, old: old, new: vals, toasted: toasted}, oldSize+size)
	case *pglogrepl.DeleteMessage:
		old, _, size := tupleValues(m.OldTuple)
		return s.add(ctx, event{op: 'D', rel: m.RelationID, old: old}, size)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := s.add(ctx, event{op: 'T', rel: id}, 0); err != nil {
				return err
			}
		}
	case *pglogrepl.CommitMessage:
		return s.commit(ctx, m)
	}
	return nil
}

// add records a change of size bytes of values in the transaction being
// decoded, appending what it holds as a part once that is large.
func (s *session) add(ctx context.Context, e event, size int) error {
	if s.txn == nil {
		return nil
	}
	s.txn.events = append(s.txn.events, e)
	s.txn.bytes += size
	if len(s.txn.events) >= partEvents || s.txn.bytes >= partBytes {
		return s.part(ctx)
	}
	return nil
}

// relation records a table's columns with their exact type names, which
// form its replica identity, and which may be stored out of line.
func (s *session) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	r := &relation{schema: m.Namespace, table: m.RelationName}
	oids, mods := make([]uint32, len(m.Columns)), make([]int32, len(m.Columns))
	r.oids, r.mods = oids, mods
	names := make([]string, len(m.Columns))
	for i, c := range m.Columns {
		oids[i], mods[i], names[i] = c.DataType, c.TypeModifier, c.Name
		r.key = append(r.key, c.Flags&1 != 0)
		r.types = append(r.types, ColumnType{OID: c.DataType, Mod: c.TypeModifier})
	}
	rows, err := s.conn.Query(ctx, `SELECT pg_catalog.format_type(u.oid, u.mod), coalesce(t.typlen = -1, true)
		FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(oid, mod, o)
		LEFT JOIN pg_catalog.pg_type t ON t.oid = u.oid ORDER BY u.o`, oids, mods)
	if err != nil {
		return err
	}
	var typ string
	var varlena bool
	i := 0
	_, err = pgx.ForEachRow(rows, []any{&typ, &varlena}, func() error {
		r.cols = append(r.cols, SourceColumn{Name: names[i], Type: typ})
		r.varlena = append(r.varlena, varlena)
		i++
		return nil
	})
	if err != nil {
		return err
	}
	now, err := layout(ctx, s.conn, m.RelationID)
	if err != nil {
		return err
	}
	r.bind(now)
	r.kept = keepColumns(s.p.Sources, r.schema, r.table, names, r.key, r.varlena)
	s.rels[m.RelationID] = r
	return nil
}

// commit queues a decoded transaction; it is projected and appended with
// the others pending when the stream pauses or enough are queued. A
// transaction appended in parts commits its log transaction now.
func (s *session) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	txn := s.txn
	s.txn = nil
	if txn == nil {
		return nil
	}
	txn.commitLSN, txn.endLSN, txn.commitTime = uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime
	if s.open != nil {
		if err := s.wait(); err != nil {
			return err
		}
		tx := s.open
		if len(txn.events) > 0 {
			if err := s.write(ctx, tx, []*transaction{txn}); err != nil {
				return err
			}
		}
		if _, err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("cannot append to the event log: %w", err)
		}
		s.open = nil
		s.p.Logger.Info().Str("system", s.p.System).Str("lsn", pglogrepl.LSN(txn.commitLSN).String()).
			Int("parts", txn.parts+1).Msg("large source transaction captured")
		s.pendingEnd = max(s.pendingEnd, txn.endLSN)
		s.confirmed = max(s.confirmed, txn.endLSN)
		return nil
	}
	if len(txn.events) > 0 {
		s.pending = append(s.pending, txn)
		s.pendingEvents += len(txn.events)
		s.pendingBytes += txn.bytes
	}
	s.pendingEnd = txn.endLSN
	if len(s.pending) >= maxPending || s.pendingEvents >= maxPendingEvents || s.pendingBytes >= maxPendingBytes {
		return s.flush(ctx)
	}
	return nil
}
