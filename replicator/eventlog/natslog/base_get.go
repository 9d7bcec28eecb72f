package natslog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Batched reads of a version's base stream (base.go): the last message of
// many subjects in one request, as JetStream's direct get answers it
// (multi_last), instead of a request per row and a consumer per listing.
//
// Any replica of the stream answers a direct get, and a replica may be
// behind the leader. So every read also asks for the stream's stamp
// subject, which each committed base write ends with: an answer then
// always holds a message, and its end says how far the answering
// replica's stream goes (Nats-UpTo-Sequence). An answer from a replica
// that has not reached the committed sequence is asked again.

const (
	// subjectsPerRequest: JetStream answers a multi_last of at most 1024
	// subjects (413 beyond).
	subjectsPerRequest = 1000
	// filtersPerRequest bounds the wildcard filters of one request (each
	// may match several subjects).
	filtersPerRequest = 256
	// bytesPerAnswer bounds what one answer holds in memory; the rest is
	// asked for again from where it stopped.
	bytesPerAnswer = 4 << 20
	// staleTries: how often an answer from a replica behind is asked again.
	staleTries = 50
)

// errTooMany: the filters match more subjects than one answer holds.
var errTooMany = errors.New("more base subjects than one request answers")

func stampSubject(v eventlog.Version) string { return basePrefix(v) + ".s" }

func directGetSubject(stream string) string { return "$JS.API.DIRECT.GET." + stream }

// lastMsg is a subject's last message as a direct get gives it.
type lastMsg struct {
	subject string
	seq     uint64
	gone    bool // a tombstone
	data    []byte
}

// answer is one direct get's answer: its messages, and from its end
// (status 204) how many it left out and how far the replica's stream
// goes.
type answer struct {
	status  string // "204" at the end of messages, else the error status
	msgs    []lastMsg
	pending uint64
	upTo    uint64
}

type multiLastRequest struct {
	MultiLast []string `json:"multi_last"`
	Seq       uint64   `json:"seq,omitempty"` // skip messages before
	MaxBytes  int      `json:"max_bytes"`
}

// lastMsgs calls each, in sequence order, with the last message of every
// subject the filters match (wildcards allowed; more than 1024 subjects is
// errTooMany), as of the committed base sequence: a message past it is
// of an append that has not committed (eventlog.ErrConcurrentAppend).
func (vt *versionTx) lastMsgs(ctx context.Context, l *Log, filters []string, each func(lastMsg) error) error {
	return vt.lastMsgsFrom(ctx, l, filters, 0, each)
}

// lastMsgsFrom is lastMsgs without the messages before stream sequence
// from.
func (vt *versionTx) lastMsgsFrom(ctx context.Context, l *Log, filters []string, from uint64, each func(lastMsg) error) error {
	committed := vt.was.baseSeq
	stamp := stampSubject(vt.v)
	req := multiLastRequest{MultiLast: append(slices.Clip(filters), stamp), Seq: from, MaxBytes: bytesPerAnswer}
	for {
		a, err := l.askFresh(ctx, baseStream(vt.v), &req, committed)
		if err != nil {
			return err
		}
		for _, m := range a.msgs {
			if m.seq > committed {
				return eventlog.ErrConcurrentAppend // an append that has not committed (yet)
			}
			if m.subject == stamp {
				continue
			}
			if err := each(m); err != nil {
				return err
			}
		}
		if a.pending == 0 || len(a.msgs) == 0 {
			return nil
		}
		req.Seq = a.msgs[len(a.msgs)-1].seq + 1
	}
}

// askFresh sends a multi_last request until a replica that has the
// committed sequence answers it.
func (l *Log) askFresh(ctx context.Context, stream string, req *multiLastRequest, committed uint64) (*answer, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	for try := 1; ; try++ {
		a, err := l.directGet(ctx, stream, body)
		if err != nil {
			return nil, err
		}
		switch {
		case a.status == "204" && a.upTo >= committed:
			return a, nil
		case a.status == "404" && committed == 0:
			return &answer{status: a.status}, nil // nothing committed yet
		case a.status == "413":
			return nil, errTooMany
		case a.status != "204" && a.status != "404" && a.status != "503":
			return nil, fmt.Errorf("cannot read the base stream %s: status %s", stream, a.status)
		}
		// A replica behind the committed sequence (404: not even the
		// stamp), or none answering yet (503: direct gets not started).
		if try == staleTries {
			return nil, fmt.Errorf("cannot read the base stream %s: no replica has its committed sequence %d (status %s)", stream, committed, a.status)
		}
		select {
		case <-time.After(time.Duration(min(try, 10)) * 5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// directGet sends one direct get and collects its answer.
func (l *Log) directGet(ctx context.Context, stream string, body []byte) (*answer, error) {
	inbox := l.nc.NewInbox()
	sub, err := l.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := l.nc.PublishRequest(directGetSubject(stream), inbox, body); err != nil {
		return nil, err
	}
	rctx, cancel := request(ctx)
	defer cancel()
	a := &answer{}
	for {
		m, err := sub.NextMsgWithContext(rctx)
		if err != nil {
			return nil, fmt.Errorf("cannot read the base stream %s: %w", stream, err)
		}
		if status := m.Header.Get("Status"); status != "" {
			a.status = status
			a.pending, _ = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
			a.upTo, _ = strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64)
			return a, nil
		}
		seq, err := strconv.ParseUint(m.Header.Get(nats.JSSequence), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("cannot read the base stream %s: an answer without its sequence", stream)
		}
		a.msgs = append(a.msgs, lastMsg{subject: m.Header.Get(nats.JSSubject), seq: seq, gone: m.Header.Get(hdrOp) == "d", data: m.Data})
	}
}

// listLast calls each with the last committed message, not a tombstone,
// of every subject the filters match: in batched direct gets, and a
// filter that alone matches more subjects than one answer holds (a
// customer with many orders) through a consumer (committedList).
func (vt *versionTx) listLast(ctx context.Context, l *Log, filters []string, each func(subject string, b *baseMsg) error) error {
	per := subjectsPerRequest
	for _, f := range filters {
		if isWildcard(f) {
			per = filtersPerRequest
			break
		}
	}
	for part := range slices.Chunk(filters, per) {
		if err := vt.listPart(ctx, l, part, each); err != nil {
			return err
		}
	}
	return nil
}

func (vt *versionTx) listPart(ctx context.Context, l *Log, filters []string, each func(subject string, b *baseMsg) error) error {
	err := vt.lastMsgs(ctx, l, filters, func(m lastMsg) error {
		if m.gone {
			return nil
		}
		var b baseMsg
		if err := json.Unmarshal(m.data, &b); err != nil {
			return errors.New("a base row of the event log does not read: " + err.Error())
		}
		return each(m.subject, &b)
	})
	if !errors.Is(err, errTooMany) {
		return err
	}
	if len(filters) == 1 {
		return vt.committedList(ctx, filters, each)
	}
	half := len(filters) / 2
	if err := vt.listPart(ctx, l, filters[:half], each); err != nil {
		return err
	}
	return vt.listPart(ctx, l, filters[half:], each)
}

func isWildcard(subject string) bool {
	for i := 0; i < len(subject); i++ {
		if (subject[i] == '*' || subject[i] == '>') && (i == 0 || subject[i-1] == '.') {
			return true
		}
	}
	return false
}

// committedRows reads the committed rows of a table with the given keys,
// by key (a key without a row is absent).
func (vt *versionTx) committedRows(ctx context.Context, l *Log, table int, keys []string) (map[string]*baseMsg, error) {
	out := map[string]*baseMsg{}
	want := make(map[string]string, len(keys)) // subject: key
	subjects := make([]string, 0, len(keys))
	for _, k := range keys {
		s := rowSubject(vt.v, table, k)
		if _, dup := want[s]; !dup {
			want[s] = k
			subjects = append(subjects, s)
		}
	}
	err := vt.listLast(ctx, l, subjects, func(subject string, b *baseMsg) error {
		if b.Key == want[subject] { // else another key's hash
			out[b.Key] = b
		}
		return nil
	})
	return out, err
}
