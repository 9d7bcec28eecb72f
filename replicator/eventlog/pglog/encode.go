package pglog

import (
	"strconv"
	"sync"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

func encode(values []eventlog.Value) ([]byte, error) {
	if values == nil {
		return nil, nil
	}
	return appendJSON(make([]byte, 0, 16*len(values)+2), values), nil
}

// appendJSON renders values as a JSON array exactly as Postgres prints it
// as jsonb (["a", null, "b"]), so keys written now equal keys stored as
// jsonb before, byte for byte.
func appendJSON(b []byte, values []eventlog.Value) []byte {
	return appendJSONAs(b, values, false)
}

// appendJSONAs is appendJSON, for COPY's text format when forCopy: JSON's
// escapes are its only backslashes (control characters are escaped, so
// no tab or newline is left to end a field or a row), and COPY reads
// each backslash doubled.
func appendJSONAs(b []byte, values []eventlog.Value, forCopy bool) []byte {
	const hex = "0123456789abcdef"
	esc := []byte{'\\'}
	if forCopy {
		esc = []byte{'\\', '\\'}
	}
	b = append(b, '[')
	for i, v := range values {
		if i > 0 {
			b = append(b, ',', ' ')
		}
		if v == nil {
			b = append(b, "null"...)
			continue
		}
		b = append(b, '"')
		for j := 0; j < len(*v); j++ {
			c := (*v)[j]
			var e byte
			switch c {
			case '"', '\\':
				e = c
			case '\b':
				e = 'b'
			case '\f':
				e = 'f'
			case '\n':
				e = 'n'
			case '\r':
				e = 'r'
			case '\t':
				e = 't'
			default:
				if c < 0x20 {
					b = append(b, esc...)
					b = append(b, 'u', '0', '0', hex[c>>4], hex[c&15])
				} else {
					b = append(b, c)
				}
				continue
			}
			b = append(b, esc...)
			if e == '\\' {
				b = append(b, esc...) // the escaped backslash, doubled as well for COPY
			} else {
				b = append(b, e)
			}
		}
		b = append(b, '"')
	}
	return append(b, ']')
}

// copyBuffers hold the COPY data of appends, reused: a catch-up renders
// megabytes a second. One larger than maxKeptCopyBuffer is left to the
// collector.
var copyBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxKeptCopyBuffer = 16 << 20

// appendTime appends t in UTC to the microsecond, as timestamptz input
// ("2006-01-02 15:04:05.000000Z"): time.AppendFormat took a tenth of the
// capture's CPU in a catch-up, once per transaction. Years past 9999 fall
// back to it.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, "2006-01-02 15:04:05.999999Z07:00")
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, ' ')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// appendDigits appends n (0 ≤ n < 10^width) in width decimal digits.
func appendDigits(b []byte, n, width int) []byte {
	b = append(b, make([]byte, width)...)
	for i := len(b) - 1; i >= len(b)-width; i-- {
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return b
}

// appendLSN appends an LSN as Postgres prints it (%X/%X).
func appendLSN(b []byte, lsn uint64) []byte {
	b = strconv.AppendUint(b, lsn>>32, 16)
	b = append(b, '/')
	b = strconv.AppendUint(b, lsn&0xFFFFFFFF, 16)
	return b
}
