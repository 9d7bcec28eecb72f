package natslog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// A run is what one append wrote to a version's change stream: chunks
// (subject …c) and the marker (subject …m) that ends it and commits it.
// Its messages are consecutive in the stream, since each expects the
// sequence of the one before: a run that was abandoned (its append failed
// before the marker) is followed by the next run's messages and never
// read. The marker's headers say what the run holds and what the version
// is after it.
const (
	hdrTx       = "Rejot-Tx"       // the append's id
	hdrFirst    = "Rejot-First"    // position of the message body's first change
	hdrStart    = "Rejot-Start"    // position of the run's first change
	hdrHead     = "Rejot-Head"     // position of the run's last change: the version's head
	hdrFrom     = "Rejot-From"     // sequence of the run's first message (0: the marker alone)
	hdrElided   = "Rejot-Elided"   // "a-b": a first state at positions (a, b], kept only as state
	hdrLayout   = "Rejot-Layout"   // the state's rows: "columns:key,key"
	hdrAppended = "Rejot-Appended" // JSON {system: last commit LSN appended}
	hdrState    = "Rejot-State"    // the state generation
	hdrPos      = "Rejot-Pos"      // a state entry's position, or the state's watermark
	hdrOp       = "Rejot-Op"       // "d": a state entry's key is gone
)

// run is a marker as read back.
type run struct {
	tx           string
	seq, from    uint64
	first, start int64
	head         int64
	elidedFrom   int64
	elidedUpto   int64
	layout       eventlog.Layout
	appended     map[string]uint64
	gen          int
	baseSeq      uint64
	baseAt       map[string]uint64
	body         []byte
}

func parseRun(m *jetstream.RawStreamMsg) (*run, error) {
	h := m.Header
	r := &run{tx: h.Get(hdrTx), seq: m.Sequence, body: m.Data, appended: map[string]uint64{}, baseAt: map[string]uint64{}}
	var err error
	num := func(name string) int64 {
		if err != nil {
			return 0
		}
		var n int64
		n, err = strconv.ParseInt(h.Get(name), 10, 64)
		return n
	}
	r.first, r.start, r.head = num(hdrFirst), num(hdrStart), num(hdrHead)
	r.from = uint64(num(hdrFrom))
	r.gen = int(num(hdrState))
	if r.from == 0 {
		r.from = r.seq
	}
	if e := h.Get(hdrElided); e != "" && err == nil {
		a, b, _ := strings.Cut(e, "-")
		if r.elidedFrom, err = strconv.ParseInt(a, 10, 64); err == nil {
			r.elidedUpto, err = strconv.ParseInt(b, 10, 64)
		}
	}
	if err == nil {
		r.layout, err = parseLayout(h.Get(hdrLayout))
	}
	if err == nil {
		err = json.Unmarshal([]byte(h.Get(hdrAppended)), &r.appended)
	}
	if b := h.Get(hdrBase); b != "" && err == nil {
		if r.baseSeq, err = strconv.ParseUint(b, 10, 64); err == nil {
			err = json.Unmarshal([]byte(h.Get(hdrBaseAt)), &r.baseAt)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("the event log holds a run marker this sidecar cannot read (sequence %d): %w", m.Sequence, err)
	}
	return r, nil
}

func formatLayout(l eventlog.Layout) string {
	keys := make([]string, len(l.Key))
	for i, k := range l.Key {
		keys[i] = strconv.Itoa(k)
	}
	return strconv.Itoa(l.Columns) + ":" + strings.Join(keys, ",")
}

func parseLayout(s string) (eventlog.Layout, error) {
	var l eventlog.Layout
	cols, keys, _ := strings.Cut(s, ":")
	n, err := strconv.Atoi(cols)
	if err != nil {
		return l, err
	}
	l.Columns = n
	if keys == "" {
		return l, nil
	}
	for _, k := range strings.Split(keys, ",") {
		i, err := strconv.Atoi(k)
		if err != nil {
			return l, err
		}
		l.Key = append(l.Key, i)
	}
	return l, nil
}

// lastRun is the version's last marker: what it is now (nil before its
// first append).
func lastRun(ctx context.Context, s jetstream.Stream, v eventlog.Version) (*run, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	m, err := s.GetLastMsgForSubject(ctx, runSubject(v))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseRun(m)
}

// runAfter is the first marker at or after sequence seq (nil: none).
func runAfter(ctx context.Context, s jetstream.Stream, v eventlog.Version, seq uint64) (*run, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(runSubject(v)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseRun(m)
}

// runHolding finds the run holding position pos: the first marker whose
// head is at or past it, by bisecting the stream's sequences (markers'
// heads grow with their sequence). nil: no run holds it yet.
// It returns the stream's first sequence too: what is before was pruned.
func runHolding(ctx context.Context, s jetstream.Stream, v eventlog.Version, pos int64) (*run, uint64, error) {
	info, err := streamInfo(ctx, s)
	if err != nil {
		return nil, 0, err
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq+1
	var found *run
	for lo < hi {
		mid := lo + (hi-lo)/2
		r, err := runAfter(ctx, s, v, mid)
		if err != nil {
			return nil, 0, err
		}
		if r == nil {
			hi = mid
			continue
		}
		if r.head >= pos {
			found, hi = r, mid
		} else {
			lo = r.seq + 1
		}
	}
	return found, info.State.FirstSeq, nil
}

// isWrongLastSequence: a publish expected another last sequence (someone
// else appended meanwhile).
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

func newMsg(subject string, body []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
}

// requestTimeout bounds each request to JetStream. The client applies
// its own default only to contexts without a deadline; a request sent
// while a stream elects its leader may get no answer, and a caller with a
// long deadline would wait for all of it.
const requestTimeout = 10 * time.Second

func request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, requestTimeout)
}

func streamInfo(ctx context.Context, s jetstream.Stream) (*jetstream.StreamInfo, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	return s.Info(ctx)
}
