package pglog

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/rejot-dev/rejot/replicator"
)

// FuzzDecodeValues: the fast path reads every array the log writes as
// encoding/json does, and refuses what encoding/json refuses.
func FuzzDecodeValues(f *testing.F) {
	for _, seed := range []string{`[]`, `["1"]`, `["a", null, "b"]`, `["x","y"]`, `[null]`, `["a\"b"]`, `["\u00e9"]`,
		`["é ✓"]`, `["a",]`, `[,]`, `["a" "b"]`, `["a"`, `nul`, `[nul]`, `[1]`, `["\t"]`, "[\"\t\"]", `[ "a" ]`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := decodeValues(s)
		var want []replicator.Value
		werr := json.Unmarshal([]byte(s), &want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: error %v, encoding/json says %v", s, err, werr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: %v, encoding/json reads %v", s, render(got), render(want))
		}
		if err == nil && got != nil {
			// What the log writes reads back the same.
			again, err := decodeValues(string(appendJSON(nil, got)))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("%q: written and read back: %v, %v", s, render(again), err)
			}
		}
	})
}

func render(vals []replicator.Value) []any {
	out := make([]any, len(vals))
	for i, v := range vals {
		if v == nil {
			out[i] = nil
		} else {
			out[i] = *v
		}
	}
	return out
}

// TestAppendLSN: LSNs are written as Postgres reads them.
func TestAppendLSN(t *testing.T) {
	for _, lsn := range []uint64{0, 1, 0x16B3748, 0xABCDEF0123456789, 0xFFFFFFFF, 1 << 32} {
		got := string(appendLSN(nil, lsn))
		if want := pglogrepl.LSN(lsn).String(); !strings.EqualFold(got, want) {
			t.Errorf("%d: %s, want %s", lsn, got, want)
		}
	}
}

// FuzzJSONForCopy: a change's JSON written for COPY is the JSON the log
// keeps once COPY has read it (each backslash doubled, nothing else
// escaped), and holds no byte that would end a COPY field or row.
func FuzzJSONForCopy(f *testing.F) {
	for _, seed := range []string{"", "a", `back\slash`, "tab\tnew\nline\r", "q\"uote", "\x00\x01\x1f", "é ✓", `\\N`} {
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, s string, null bool) {
		vals := []replicator.Value{&s, nil}
		if !null {
			vals = vals[:1]
		}
		plain := string(appendJSON(nil, vals))
		copied := string(appendJSONAs(nil, vals, true))
		if strings.ContainsAny(copied, "\t\n\r") {
			t.Fatalf("%q: raw field or row end in %q", s, copied)
		}
		if read := strings.ReplaceAll(copied, `\\`, `\`); read != plain {
			t.Fatalf("%q: COPY reads %q, want %q", s, read, plain)
		}
	})
}
