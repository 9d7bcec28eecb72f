package capture

import (
	"strings"
	"testing"
)

// The WAL's columns of a table (id int, total int, customer text) as
// relation binds them, and a version that reads id, customer and total
// as recorded when customer was attribute 2.
func boundRelation(attnums []int16, names []string) *relation {
	r := &relation{}
	var now []attribute
	for i, n := range names {
		typ, mod := uint32(23), int32(-1)
		if n == "customer" || n == "client" {
			typ = 25
		}
		r.cols = append(r.cols, SourceColumn{Name: n, Type: "int"})
		r.oids, r.mods = append(r.oids, typ), append(r.mods, mod)
		now = append(now, attribute{attnum: attnums[i], name: n, typ: typ, typmod: mod})
	}
	r.bind(now)
	return r
}

func readsCustomer() *Source {
	return &Source{Reads: []Read{
		{Attnum: 1, Name: "id", Type: 23, Typmod: -1},
		{Attnum: 2, Name: "customer", Type: 25, Typmod: -1},
		{Attnum: 3, Name: "total", Type: 23, Typmod: -1},
	}}
}

func names(cols []SourceColumn) string {
	var out []string
	for _, c := range cols {
		out = append(out, c.Name)
	}
	return strings.Join(out, ",")
}

func TestColumnsByIdentity(t *testing.T) {
	for _, c := range []struct {
		name    string
		attnums []int16
		cols    []string
		want    string // the columns as the version names them, or the error's words
	}{
		{"as published", []int16{1, 2, 3}, []string{"id", "customer", "total"}, "id,customer,total"},
		{"renamed", []int16{1, 2, 3}, []string{"id", "client", "total"}, "id,customer,total"},
		// The drop undone: a column added under the recorded name and
		// type is read in the dropped one's place (verify judges by name).
		{"dropped and added again", []int16{1, 3, 4}, []string{"id", "total", "customer"}, "id,total,customer"},
		{"dropped", []int16{1, 3}, []string{"id", "total"}, "which it reads, is dropped"},
		// The renamed column is still the one read; the new one under the
		// old name is not taken for it.
		{"renamed, another added under its name", []int16{1, 2, 3, 4}, []string{"id", "client", "total", "customer"},
			"id,customer,total,rejot unread 3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := boundRelation(c.attnums, c.cols)
			got, err := r.columnsFor(readsCustomer())
			if err != nil {
				if !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %q, want %q", err, c.want)
				}
				return
			}
			if names(got) != c.want {
				t.Fatalf("columns %s, want %s", names(got), c.want)
			}
		})
	}
	// Added again with another type: still dropped.
	r := boundRelation([]int16{1, 3, 4}, []string{"id", "total", "customer"})
	r.oids[2] = 1043
	if _, err := r.columnsFor(readsCustomer()); err == nil || !strings.Contains(err.Error(), "is dropped") {
		t.Fatalf("a column added again with another type: %v, want it dropped", err)
	}
}
