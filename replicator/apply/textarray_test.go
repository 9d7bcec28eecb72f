package apply

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestTextArrayEncodesAsPgxDoes: a textArray goes over the wire exactly as
// pgx sends the []eventlog.Value it holds, in both formats: NULLs, empty
// strings and multibyte text alike; an empty column is an empty array.
func TestTextArrayEncodesAsPgxDoes(t *testing.T) {
	m := pgtype.NewMap()
	for _, col := range [][]eventlog.Value{
		{},
		values("1", "", "ünï", `a"b\c{}`, "NULL"),
		{nil, values("x")[0], nil},
	} {
		for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
			want, err := m.Encode(pgtype.TextArrayOID, format, col, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Encode(pgtype.TextArrayOID, format, textArray(col), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("format %d, %d values: %q, want %q", format, len(col), got, want)
			}
		}
	}
}

func BenchmarkTextArrayEncode(b *testing.B) {
	m := pgtype.NewMap()
	col := make([]eventlog.Value, 5000)
	for i := range col {
		col[i] = values("some value of a column")[0]
	}
	b.Run("[]eventlog.Value", func(b *testing.B) {
		for b.Loop() {
			m.Encode(pgtype.TextArrayOID, pgtype.BinaryFormatCode, col, nil)
		}
	})
	b.Run("textArray", func(b *testing.B) {
		for b.Loop() {
			m.Encode(pgtype.TextArrayOID, pgtype.BinaryFormatCode, textArray(col), nil)
		}
	})
}
