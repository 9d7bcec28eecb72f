package natslog

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// A message body is a run of records, each part of one group: its system,
// commit LSN and time, and changes. Values are Postgres's text form as
// bytes, each prefixed by its length plus one (0 is NULL): exact, and
// NULL stays distinct from the empty string. A group may span records and
// messages; it ends where a record of another group starts, or the run
// does.

// part is a decoded record: changes of one group, from position first.
type part struct {
	system     string
	lsn        uint64
	commitTime time.Time
	first      int64
	changes    []eventlog.Change
}

func appendRecordHeader(b []byte, system string, lsn uint64, at time.Time, n int) []byte {
	b = binary.AppendUvarint(b, uint64(len(system)))
	b = append(b, system...)
	b = binary.AppendUvarint(b, lsn)
	b = binary.AppendVarint(b, at.UnixNano())
	return binary.AppendUvarint(b, uint64(n))
}

func appendChange(b []byte, c eventlog.Change) []byte {
	b = append(b, byte(c.Op))
	b = appendValues(b, c.Key)
	return appendValues(b, c.Row)
}

// appendValues writes values: their count plus one (0 is nil), then each.
func appendValues(b []byte, vals []eventlog.Value) []byte {
	if vals == nil {
		return binary.AppendUvarint(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(vals))+1)
	for _, v := range vals {
		if v == nil {
			b = binary.AppendUvarint(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(*v))+1)
		b = append(b, *v...)
	}
	return b
}

var errCorrupt = errors.New("the event log holds a message this sidecar cannot decode")

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err, r.b = errCorrupt, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err, r.b = errCorrupt, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if uint64(len(r.b)) < n {
		r.err, r.b = errCorrupt, nil
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) values() []eventlog.Value {
	n := r.uvarint()
	if n == 0 || r.err != nil {
		return nil
	}
	if n-1 > uint64(len(r.b)) { // each value takes a byte at least
		r.err = errCorrupt
		return nil
	}
	vals := make([]eventlog.Value, n-1)
	for i := range vals {
		l := r.uvarint()
		if l == 0 {
			continue
		}
		s := string(r.bytes(l - 1))
		vals[i] = &s
	}
	return vals
}

// decodeParts decodes a message body whose first change is at position
// first.
func decodeParts(b []byte, first int64) ([]part, error) {
	r := &reader{b: b}
	var parts []part
	pos := first
	for len(r.b) > 0 && r.err == nil {
		p := part{first: pos}
		p.system = string(r.bytes(r.uvarint()))
		p.lsn = r.uvarint()
		p.commitTime = time.Unix(0, r.varint()).UTC()
		n := r.uvarint()
		if n > uint64(len(r.b)) {
			return nil, errCorrupt
		}
		p.changes = make([]eventlog.Change, n)
		for i := range p.changes {
			c := &p.changes[i]
			op := r.bytes(1)
			if r.err != nil {
				break
			}
			c.Op = eventlog.Op(op[0])
			c.Key = r.values()
			c.Row = r.values()
		}
		pos += int64(n)
		parts = append(parts, p)
	}
	return parts, r.err
}

// decodeRow decodes a state entry's row.
func decodeRow(b []byte) ([]eventlog.Value, error) {
	r := &reader{b: b}
	vals := r.values()
	return vals, r.err
}
