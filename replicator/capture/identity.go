package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Columns by identity.
//
// A version's query names the columns of its table as they were named
// when it was published; the owner may rename them since (a rename is
// not a change of the public schema), or swap two names. So the columns
// a version reads are recorded by attribute number with their names and
// types (managed 009, Read), and every table's columns as the WAL
// describes them (a Relation message: names and types, in attribute
// order, as of that point of the WAL) are bound to attribute numbers:
// when they are what the catalog has now, position i is the i-th column
// of the catalog. Each version then sees the WAL's columns under the names
// its query uses — the recorded ones — and any column it does not read
// under a name no query uses, so a swap of two names cannot swap data.
//
// When the WAL's columns are not what the catalog has now (the table
// changed again since, and the capture has not reached that change yet),
// the binding is not known. A version whose columns were not renamed
// since it was recorded is read by name then, as Postgres's own logical
// replication does; one whose columns were renamed is refused with a
// clear error rather than guessed at.

// Read is a column a version reads, as recorded when it was published.
type Read struct {
	Attnum int16  `json:"attnum"`
	Name   string `json:"name"`
	Type   uint32 `json:"type"`
	Typmod int32  `json:"typmod"`
}

// attribute is a column of a table as the catalog has it now.
type attribute struct {
	attnum int16
	name   string
	typ    uint32
	typmod int32
}

// setReads takes the recorded reads and renames of a version (JSON, as
// managed.CapturedVersions gives them).
func (s *Source) setReads(reads, renamed string) error {
	if err := json.Unmarshal([]byte(reads), &s.Reads); err != nil {
		return fmt.Errorf("publication %s version %d: its recorded columns do not read: %w", s.Version.Publication, s.Version.Number, err)
	}
	if err := json.Unmarshal([]byte(renamed), &s.Renamed); err != nil {
		return fmt.Errorf("publication %s version %d: its renamed columns do not read: %w", s.Version.Publication, s.Version.Number, err)
	}
	if len(s.Renamed) == 0 {
		s.Renamed = nil
	}
	return nil
}

// table is what the version's rows are read from in its table itself (the
// first fill): the table, or when columns it reads were renamed, the table
// with those columns under the names its query uses.
func (s *Source) table() string {
	name := pgx.Identifier{s.Schema, s.Table}.Sanitize()
	if len(s.Renamed) == 0 {
		return name
	}
	cols := []string{"ctid"}
	for _, r := range s.Reads {
		now := r.Name
		if n, ok := s.Renamed[r.Name]; ok {
			now = n
		}
		cols = append(cols, pgx.Identifier{now}.Sanitize()+" AS "+pgx.Identifier{r.Name}.Sanitize())
	}
	return "(SELECT " + strings.Join(cols, ", ") + " FROM " + name + ") AS " + pgx.Identifier{s.Table}.Sanitize()
}

// nowNamed is the name a column the version reads has now.
func (s *Source) nowNamed(recorded string) string {
	if n, ok := s.Renamed[recorded]; ok {
		return n
	}
	return recorded
}

// nowNames are the names the columns the version reads have now.
func (s *Source) nowNames() []string {
	out := make([]string, len(s.References))
	for i, c := range s.References {
		out[i] = s.nowNamed(c)
	}
	return out
}

// layout reads a table's columns as the catalog has them now, in the
// order the WAL has them (attribute order; generated columns are not in
// the WAL).
func layout(ctx context.Context, q Querier, table uint32) ([]attribute, error) {
	rows, err := q.Query(ctx, `SELECT a.attnum, a.attname::text, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum`, table)
	if err != nil {
		return nil, err
	}
	var out []attribute
	var a attribute
	_, err = pgx.ForEachRow(rows, []any{&a.attnum, &a.name, &a.typ, &a.typmod}, func() error {
		out = append(out, a)
		return nil
	})
	return out, err
}

// bind sets the attribute numbers of a relation's columns when they are
// what the catalog has now (names, types and modifiers, in order), and
// keeps the catalog's columns.
func (r *relation) bind(now []attribute) {
	r.now, r.attnums = now, nil
	if len(now) != len(r.cols) {
		return
	}
	attnums := make([]int16, len(now))
	for i, a := range now {
		if a.name != r.cols[i].Name || a.typ != r.oids[i] || a.typmod != r.mods[i] {
			return
		}
		attnums[i] = a.attnum
	}
	r.attnums = attnums
}

// columnsFor are the relation's columns as src's query names them: the
// ones it reads under their recorded names, the others under names no
// query uses. An error says why the version cannot be read from them
// (Source.cannot makes it the version's failure).
func (r *relation) columnsFor(src *Source) ([]SourceColumn, error) {
	if len(src.Reads) == 0 {
		return r.cols, nil // recorded before reads were: by name
	}
	if cols, ok := r.named[src]; ok {
		return cols, nil
	}
	cols, err := r.nameFor(src)
	if err != nil {
		return nil, err
	}
	if r.named == nil {
		r.named = map[*Source][]SourceColumn{}
	}
	r.named[src] = cols
	return cols, nil
}

func (r *relation) nameFor(src *Source) ([]SourceColumn, error) {
	if r.attnums == nil {
		return r.byName(src)
	}
	reads := map[int16]Read{}
	taken := map[string]bool{}
	var gone []Read
	for _, rd := range src.Reads {
		taken[rd.Name] = true
		if r.hasAttnum(rd.Attnum) {
			reads[rd.Attnum] = rd
		} else {
			gone = append(gone, rd)
		}
	}
	// A column it reads that was dropped, when the table has one again
	// under its recorded name and type (the owner undid the drop), is read
	// from that one: by name, as verify judges the version, and as
	// Postgres's own replication reads every column.
	for _, rd := range gone {
		if n, ok := r.readdedAs(rd, reads); ok {
			reads[n] = rd
		}
	}
	out := make([]SourceColumn, len(r.cols))
	seen := 0
	for i, c := range r.cols {
		rd, ok := reads[r.attnums[i]]
		if !ok {
			out[i] = SourceColumn{Name: unusedName(i, taken), Type: c.Type}
			continue
		}
		if rd.Type != r.oids[i] || rd.Typmod != r.mods[i] {
			return nil, fmt.Errorf("column %s (published as %s) changed its type to %s",
				pgx.Identifier{c.Name}.Sanitize(), pgx.Identifier{rd.Name}.Sanitize(), c.Type)
		}
		out[i] = SourceColumn{Name: rd.Name, Type: c.Type}
		seen++
	}
	if seen != len(src.Reads) {
		for _, rd := range src.Reads {
			if !r.hasAttnum(rd.Attnum) {
				return nil, fmt.Errorf("column %s, which it reads, is dropped", pgx.Identifier{rd.Name}.Sanitize())
			}
		}
	}
	return out, nil
}

// byName names the WAL's columns as they are named in it, which is right
// for src when none of the columns it reads has been renamed since it was
// published (as of the catalog now) and each is in the WAL by that name
// and type.
func (r *relation) byName(src *Source) ([]SourceColumn, error) {
	for _, rd := range src.Reads {
		if !r.namedNow(rd) {
			return nil, fmt.Errorf("its column %s was renamed, and the table changed again before the capture read the changes in between: "+
				"which column is which there cannot be told", pgx.Identifier{rd.Name}.Sanitize())
		}
		found := 0
		for i, c := range r.cols {
			if c.Name == rd.Name && r.oids[i] == rd.Type && r.mods[i] == rd.Typmod {
				found++
			}
		}
		if found != 1 {
			return nil, fmt.Errorf("column %s, which it reads, is not in the table's changes as published", pgx.Identifier{rd.Name}.Sanitize())
		}
	}
	return r.cols, nil
}

// namedNow says whether a column read is, in the catalog when the WAL
// described the table, named as recorded.
func (r *relation) namedNow(rd Read) bool {
	for _, a := range r.now {
		if a.attnum == rd.Attnum {
			return a.name == rd.Name
		}
	}
	return true // dropped: the WAL names what it had
}

// readdedAs finds the column that replaces a dropped one a version reads:
// the only one of the WAL's columns, not read by identity already, with
// its recorded name, type and modifier.
func (r *relation) readdedAs(rd Read, reads map[int16]Read) (int16, bool) {
	var found []int16
	for i, c := range r.cols {
		if _, read := reads[r.attnums[i]]; !read && c.Name == rd.Name && r.oids[i] == rd.Type && r.mods[i] == rd.Typmod {
			found = append(found, r.attnums[i])
		}
	}
	if len(found) != 1 {
		return 0, false
	}
	return found[0], true
}

func (r *relation) hasAttnum(n int16) bool {
	for _, a := range r.attnums {
		if a == n {
			return true
		}
	}
	return false
}

// unusedName names a column no query reads, so that it cannot be taken
// for one that is read.
func unusedName(i int, taken map[string]bool) string {
	name := "rejot unread " + strconv.Itoa(i)
	for taken[name] {
		name += "'"
	}
	return name
}
