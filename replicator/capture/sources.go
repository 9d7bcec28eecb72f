package capture

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/sql"
)

// Source is a publication version and the table its rows come from.
type Source struct {
	Projection
	Schema, Table string
	// KeySources are the source columns of the public key, in key order:
	// a deleted row's public key is read from its old key tuple.
	KeySources []string
	// References are the source columns the projection reads.
	References []string
	// Reads are the columns it reads by identity, as recorded when it was
	// published (none for a version recorded before that was kept): the
	// WAL's columns are matched to them by attribute number, so a rename
	// changes nothing (see identity.go).
	Reads []Read
	// Renamed are the columns read that have another name now: recorded
	// name to name now.
	Renamed map[string]string
	// Types are the public columns' recorded types, in order (none for a
	// record that predates them): what the table must still give.
	Types []ColumnType
	// Join is how the rows of a version whose query joins tables are
	// made (join.go); nil for a version of one table.
	Join *joinPlan
}

// VersionProblem is a publication version that cannot be computed now,
// and why (with what fixes it).
type VersionProblem struct {
	Version eventlog.Version
	Problem string
	// Schema: the owner's schema or privileges cause it, which the
	// capture checks again at every look at the record; otherwise (its
	// projection errors) it is retried after a backoff.
	Schema bool
}

// ColumnType is a public column's type as the version records it.
type ColumnType struct {
	OID uint32 // 0 where the record predates recorded types
	Mod int32
}

// LoadSources reads the capture sources of the publications recorded in
// the owner's database, each to run as the role that recorded it. A
// version that cannot be captured as that role — the role is gone, the
// capture's role cannot SET ROLE to it, its query does not analyse, its
// table is gone — is left out, and said in problems: it is never captured
// with the sidecar's own powers instead.
func LoadSources(ctx context.Context, conn *pgx.Conn) (sources []Source, problems []VersionProblem, err error) {
	// A _rejot the sidecar's role does not own is anyone's to write: what
	// it says is not captured.
	if err := managed.CheckOwned(ctx, conn); err != nil {
		return nil, nil, err
	}
	// An error of the query is also the rows': CollectRows returns it.
	rows, _ := conn.Query(ctx, managed.CapturedVersions)
	recs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (record, error) {
		var x record
		return x, r.Scan(&x.version.Publication, &x.version.Number, &x.query, &x.key, &x.schema, &x.table, &x.columns,
			&x.role, &x.canBecome, &x.typeOIDs, &x.typeMods, &x.source, &x.reads, &x.renamed)
	})
	if noRecord(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, r := range recs {
		src, err := r.load()
		if err == nil {
			err = src.setReads(r.reads, r.renamed)
		}
		if err != nil {
			problems = append(problems, VersionProblem{Version: r.version, Problem: err.Error(), Schema: true})
			continue
		}
		sources = append(sources, src)
	}
	return sources, problems, nil
}

// record is a version as the owner's record holds it (CapturedVersions).
type record struct {
	version       eventlog.Version
	query         string
	key           []string
	schema, table *string // nil: the table is gone
	columns       []string
	role          *string
	canBecome     bool
	typeOIDs      []uint32
	typeMods      []int32
	source        string
	reads         string
	renamed       string
}

// load makes the source of a recorded version, or says why it cannot be
// captured.
func (r *record) load() (Source, error) {
	v := r.version
	if r.schema == nil || r.table == nil {
		return Source{}, fmt.Errorf("publication %s version %d cannot be computed: its table %s does not exist (dropped, or renamed); "+
			"publish the version again over the table as it is now, or bring the table back", v.Publication, v.Number, r.source)
	}
	if r.role == nil {
		return Source{}, fmt.Errorf("publication %s version %d is not captured: the role that published it is gone; publish it again", v.Publication, v.Number)
	}
	if !r.canBecome {
		return Source{}, fmt.Errorf("publication %s version %d is not captured: it is captured as role %s, which the sidecar's role cannot become (GRANT %s TO <the sidecar's role>)",
			v.Publication, v.Number, pgx.Identifier{*r.role}.Sanitize(), pgx.Identifier{*r.role}.Sanitize())
	}
	src, err := NewSource(v, r.query, r.key, *r.schema, *r.table)
	if err != nil {
		return Source{}, err
	}
	if err := src.Order(r.columns); err != nil {
		return Source{}, err
	}
	if len(r.typeOIDs) == len(r.columns) && len(r.typeMods) == len(r.columns) {
		for i := range r.columns {
			src.Types = append(src.Types, ColumnType{OID: r.typeOIDs[i], Mod: r.typeMods[i]})
		}
	}
	src.Role = *r.role
	return src, nil
}

// noRecord says whether err is the owner's record being missing: no
// _rejot yet. The sidecar installs it as it starts, and nothing can be
// published before, so there is nothing to capture.
func noRecord(err error) bool {
	return managed.NotInstalled(err)
}

// NewSource makes the capture source of a publication version from its
// published query, public key columns and (resolved) table.
func NewSource(v eventlog.Version, query string, key []string, schema, table string) (Source, error) {
	if sql.IsJoin(query) {
		return newJoinSource(v, query, key, schema, table)
	}
	a, perr := sql.AnalyzeProjection(query)
	if perr != nil {
		return Source{}, fmt.Errorf("publication %s version %d: %w", v.Publication, v.Number, perr)
	}
	src := Source{Schema: schema, Table: table, References: a.References}
	src.Version, src.Filter = v, a.Filter
	for i, col := range a.Columns {
		src.Exprs = append(src.Exprs, col.Expr)
		src.Names = append(src.Names, col.Name)
		src.Sources = append(src.Sources, col.Source)
		for _, k := range key {
			if col.Name == k {
				src.KeyCols = append(src.KeyCols, i)
				src.KeySources = append(src.KeySources, col.Source)
			}
		}
	}
	return src, nil
}

// Order puts the public columns in the order the version's columns are
// recorded (the first minor's columns first, then those each minor added),
// so every row the log holds for a version reads the same way: a row
// appended before a minor added columns is a prefix of one appended after.
func (s *Source) Order(columns []string) error {
	at := map[string]int{}
	for i, c := range s.Names {
		at[c] = i
	}
	if len(columns) != len(s.Names) {
		return fmt.Errorf("publication %s version %d: recorded with %d columns, its query has %d", s.Version.Publication, s.Version.Number, len(columns), len(s.Names))
	}
	exprs, sources := make([]string, len(columns)), make([]string, len(columns))
	for i, c := range columns {
		j, ok := at[c]
		if !ok {
			return fmt.Errorf("publication %s version %d: recorded column %s is not in its query", s.Version.Publication, s.Version.Number, c)
		}
		exprs[i], sources[i] = s.Exprs[j], s.Sources[j]
	}
	// The key in the recorded order too: deletes carry it.
	keySource := map[string]string{}
	for k, j := range s.KeyCols {
		keySource[s.Names[j]] = s.KeySources[k]
	}
	var keys []int
	var keySources []string
	for i, c := range columns {
		if src, ok := keySource[c]; ok {
			keys, keySources = append(keys, i), append(keySources, src)
		}
	}
	s.KeySources = keySources
	s.Exprs, s.KeyCols, s.Names, s.Sources = exprs, keys, columns, sources
	if s.Join != nil {
		s.Join.setRootKey(keySources)
	}
	return nil
}

// Definition identifies what a source's rows are: when it changes (a new
// minor, a new filter), the version's state is filled again.
func (s *Source) Definition() string {
	if s.Join != nil {
		return fmt.Sprintf("%s.%s/%q/%q/%v%s", s.Schema, s.Table, s.Exprs, s.Filter, s.KeyCols, s.Join.definition())
	}
	return fmt.Sprintf("%s.%s/%q/%q/%v", s.Schema, s.Table, s.Exprs, s.Filter, s.KeyCols)
}

// Layout is how the log lays out the version's rows.
func (s *Source) Layout() eventlog.Layout {
	return eventlog.Layout{Columns: len(s.Exprs), Key: s.KeyCols}
}

// textExprs are a source's public columns as text, as the log keeps them.
func (s *Source) textExprs() []string {
	if s.Join != nil { // over the stored query's output (rowsFrom)
		exprs := make([]string, len(s.Names))
		for i, n := range s.Names {
			exprs[i] = "(rejot_q." + pgx.Identifier{n}.Sanitize() + ")::text"
		}
		return exprs
	}
	exprs := make([]string, len(s.Exprs))
	for i, e := range s.Exprs {
		exprs[i] = "(" + e + ")::text"
	}
	return exprs
}

// rowsFrom is the FROM (and WHERE) that gives a source's rows.
func (s *Source) rowsFrom() string { return s.rowsWhere("") }

// rowsWhere is rowsFrom with one more condition (none when "").
func (s *Source) rowsWhere(cond string) string {
	if s.Join != nil { // the stored query itself: only the first fill reads it
		from := " FROM (" + s.Join.query + ") AS rejot_q"
		if cond != "" {
			from += " WHERE " + cond
		}
		return from
	}
	from := " FROM " + s.table()
	switch {
	case s.Filter != "" && cond != "":
		from += " WHERE (" + s.Filter + ") AND " + cond
	case s.Filter != "":
		from += " WHERE " + s.Filter
	case cond != "":
		from += " WHERE " + cond
	}
	return from
}
