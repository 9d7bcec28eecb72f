package pglog

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/rejot-dev/rejot/replicator/eventlog"
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
		var want []eventlog.Value
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

func render(vals []eventlog.Value) []any {
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
		vals := []eventlog.Value{&s, nil}
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

// TestAppendTime: commit times go into the log's COPY as timestamptz
// input; every one reads back as the same instant, to the microsecond.
func TestAppendTime(t *testing.T) {
	times := []time.Time{
		time.Date(2026, 11, 26, 7, 55, 2, 123456789, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.FixedZone("x", -7*3600-1800)),
		time.Date(9999, 12, 31, 23, 59, 59, 1000, time.UTC),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		times = append(times, time.Unix(r.Int64N(1<<34), r.Int64N(1e9)).In(time.FixedZone("y", r.IntN(86400)-43200)))
	}
	for _, tm := range times {
		s := string(appendTime([]byte("x"), tm))[1:]
		got, err := time.Parse("2006-01-02 15:04:05.999999Z07:00", s)
		if want := tm.Truncate(time.Microsecond); err != nil || !got.Equal(want) {
			t.Fatalf("%v became %q: %v, %v", tm, s, got, err)
		}
	}
	if s := string(appendTime(nil, times[0])); s != "2026-11-26 07:55:02.123456Z" {
		t.Fatalf("got %q", s)
	}
}
