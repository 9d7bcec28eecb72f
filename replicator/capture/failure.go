package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// A version that cannot be computed — its table lost a column it reads,
// changed the type of one it publishes, was dropped or renamed away, its
// role lost a privilege, or its projection errors — fails alone: it is
// quarantined (its changes are no longer appended, the log's record of
// its fill says it failed, see failedMark) while every other version of
// the system is appended and confirmed as before, so a failed version
// never makes the owner's server keep WAL. Once it can be computed again
// (re-published, or the cause undone), its state is filled again from a
// fresh snapshot, which its subscribers apply as one group: they move
// from the old rows to the mended ones in one target transaction.

// failedMark prefixes the definition the log records for a failed
// version's fill: no Source.Definition starts with it, so the version's
// state is filled again once it is captured again, after a restart too.
const failedMark = "failed: "

// maxProblem bounds the text of a problem as the log and the catalog keep
// it.
const maxProblem = 1000

// versionError is a failure of one publication version's own: its
// projection cannot be computed on what the owner's tables are now. The
// capture goes on without it; any other error (of a connection, of the
// log) stops the capture, which restarts.
type versionError struct {
	version eventlog.Version
	err     error
	schema  bool // the owner's schema or privileges cause it (see VersionProblem)
}

func (e *versionError) Error() string { return e.err.Error() }
func (e *versionError) Unwrap() error { return e.err }

// asVersionError says whether err is one version's own failure.
func asVersionError(err error) (*versionError, bool) {
	var ve *versionError
	return ve, errors.As(err, &ve)
}

// versionFault wraps err as v's own failure when it is what Postgres said
// of v's query (a missing column, a type mismatch, a privilege, an error
// raised by a function the projection calls) rather than of the
// connection or the server's state; otherwise it returns err.
func versionFault(v eventlog.Version, err error) error {
	var pe *pgconn.PgError
	if err == nil || !errors.As(err, &pe) {
		return err
	}
	switch pe.Code[:2] {
	case "08", "40", "53", "55", "57", "58", "XX", "25":
		// The connection, a conflict worth retrying, the server's
		// resources or state: not the version's.
		return err
	}
	return &versionError{version: v, err: err}
}

// problemText is how a failure reads in the catalog: bounded.
func problemText(err error) string {
	p := err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Hint != "" && !strings.Contains(p, pe.Hint) {
		p += " (" + pe.Hint + ")"
	}
	if len(p) > maxProblem {
		p = p[:maxProblem] + "…"
	}
	return p
}

// fits says whether the table as the WAL describes it now can still give
// the version: every column the projection reads is there, and every
// public column that is a source column has the type the version records.
func (s *Source) fits(r *relation) error {
	at := make(map[string]int, len(r.cols))
	for i, c := range r.cols {
		at[c.Name] = i
	}
	for _, ref := range s.References {
		if _, ok := at[ref]; !ok {
			return s.cannot(fmt.Errorf("column %s of %s is gone (dropped, or renamed without publishing the version again)",
				pgx.Identifier{ref}.Sanitize(), pgx.Identifier{s.Schema, s.Table}.Sanitize()), true)
		}
	}
	if len(s.Types) != len(s.Sources) || len(r.types) != len(r.cols) {
		return nil
	}
	for i, src := range s.Sources {
		j, ok := at[src]
		if src == "" || !ok || s.Types[i].OID == 0 {
			continue
		}
		if got := r.types[j]; got.OID != s.Types[i].OID || got.Mod != s.Types[i].Mod {
			return s.cannot(fmt.Errorf("column %s of %s changed its type to %s", pgx.Identifier{src}.Sanitize(),
				pgx.Identifier{s.Schema, s.Table}.Sanitize(), r.cols[j].Type), true)
		}
	}
	return nil
}

// cannot says that the version cannot be computed because of err, and
// what mends it.
func (s *Source) cannot(err error, schema bool) error {
	fix := "fix the cause; the version is then filled again"
	if schema {
		fix = "publish the version again with a query that gives the same public columns from the table as it is now, or undo the change"
	}
	return &versionError{version: s.Version, schema: schema, err: fmt.Errorf("publication %s version %d cannot be computed: %w; %s",
		s.Version.Publication, s.Version.Number, err, fix)}
}

// fault is err as the version's own failure when it is one (see
// versionFault), else err.
func (s *Source) fault(err error, schema bool) error {
	if _, ok := asVersionError(versionFault(s.Version, err)); ok {
		return s.cannot(err, schema)
	}
	return err
}

// verify checks the version against the owner's live schema, as its
// role, without running any of its code: Postgres analyses its query
// (columns, functions, types; parse analysis evaluates nothing), the
// public columns keep their recorded types, and the role may still read
// every column the projection reads.
func (s *Source) verify(ctx context.Context, conn *pgx.Conn) error {
	return pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := actAs(ctx, tx, s.Role); err != nil {
			return s.fault(err, true)
		}
		query := "SELECT " + strings.Join(s.Exprs, ", ") + s.rowsFrom()
		if s.Join != nil {
			query = s.Join.query
		}
		desc, err := tx.Conn().PgConn().Prepare(ctx, "", query, nil)
		if err != nil {
			return s.fault(err, true)
		}
		rows, err := tx.Query(ctx, `SELECT a.attname, a.atttypid, a.atttypmod,
				pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT'),
				pg_catalog.format_type(a.atttypid, a.atttypmod)
			FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
			pgx.Identifier{s.Schema, s.Table}.Sanitize())
		if err != nil {
			return err
		}
		type attr struct {
			typ      ColumnType
			readable bool
			name     string
		}
		attrs := map[string]attr{}
		var name, format string
		var a attr
		if _, err := pgx.ForEachRow(rows, []any{&name, &a.typ.OID, &a.typ.Mod, &a.readable, &format}, func() error {
			a.name = format
			attrs[name] = a
			return nil
		}); err != nil {
			return err
		}
		return s.checkAttributes(desc.Fields, func(col string) (ColumnType, bool, string, bool) {
			a, ok := attrs[s.nowNamed(col)] // the query's names are as recorded (identity.go)
			return a.typ, a.readable, a.name, ok
		})
	})
}

// checkAttributes compares what Postgres made of the query (fields) and
// the table's columns (attr: type, readable by the role, type name,
// exists) with the version's record.
func (s *Source) checkAttributes(fields []pgconn.FieldDescription, attr func(string) (ColumnType, bool, string, bool)) error {
	table := pgx.Identifier{s.Schema, s.Table}.Sanitize()
	for _, ref := range s.References {
		_, readable, _, ok := attr(ref)
		if !ok {
			return s.cannot(fmt.Errorf("column %s of %s is gone", pgx.Identifier{ref}.Sanitize(), table), true)
		}
		if !readable {
			return s.cannot(fmt.Errorf("role %s may no longer read column %s of %s (GRANT SELECT ON %s TO %s)",
				pgx.Identifier{s.Role}.Sanitize(), pgx.Identifier{ref}.Sanitize(), table, table, pgx.Identifier{s.Role}.Sanitize()), false)
		}
	}
	if len(s.Types) != len(s.Exprs) || len(fields) != len(s.Exprs) {
		return nil
	}
	for i, want := range s.Types {
		got, where := ColumnType{OID: fields[i].DataTypeOID, Mod: fields[i].TypeModifier}, "public column "+pgx.Identifier{s.Names[i]}.Sanitize()
		if src := s.Sources[i]; src != "" && s.Join == nil {
			// A plain column: its declared type (a domain stays one).
			typ, _, name, _ := attr(src)
			got, where = typ, "column "+pgx.Identifier{src}.Sanitize()+" of "+table+" is now "+name+", and public column "+pgx.Identifier{s.Names[i]}.Sanitize()
		}
		if want.OID != 0 && got != want {
			return s.cannot(fmt.Errorf("%s no longer has the type the version publishes", where), true)
		}
	}
	return nil
}

// snapshotEach fills the sources from one snapshot; a version whose rows
// cannot be read fails alone: it is left out of the reader's sources
// (the others are filled without it). It returns the sources filled.
func (p *WALReader) snapshotEach(ctx context.Context, todo []*Source) (uint64, []*Source, error) {
	for len(todo) > 0 {
		point, err := p.snapshot(ctx, todo)
		ve, failed := asVersionError(err)
		if !failed {
			return point, todo, err
		}
		var rest []*Source
		for _, src := range todo {
			if src.Version != ve.version {
				rest = append(rest, src)
				continue
			}
			p.Logger.Error().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
				Str("problem", problemText(ve)).Msg("publication version failed: its state cannot be filled, the others go on")
			p.fail(src, ve)
		}
		if len(rest) == len(todo) {
			return 0, nil, err // not one of these: not theirs either
		}
		p.drop(ve.version)
		todo = rest
	}
	return 0, nil, nil
}

// drop leaves a version out of the reader's sources.
func (p *WALReader) drop(v eventlog.Version) {
	kept := p.Sources[:0:0]
	for _, s := range p.Sources {
		if s.Version != v {
			kept = append(kept, s)
		}
	}
	p.Sources = kept
}

// readError is an error reading a source's rows for its first state:
// the version's own when Postgres said it of its query.
func (s *Source) readError(err error) error {
	return s.fault(fmt.Errorf("cannot read %s for its first state as role %q: %w", pgx.Identifier{s.Schema, s.Table}.Sanitize(), s.Role, err), false)
}
