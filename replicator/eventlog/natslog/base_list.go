package natslog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Referrers, in pages (eventlog.Tx). A page lists the committed rows that
// meet the refs, then this append's own: the rows under each ref are the
// last messages of the subjects under the ref's prefix, read by batched
// direct gets (base_get.go) for as many refs at once as one answer
// holds, in sequence order, and, for a ref that alone has more rows than
// one answer holds (a customer with many orders), by a consumer kept
// across the pages and deleted when it is done. No page holds more than
// its limit, whatever a ref fans out to.
//
// The cursor says where the next page goes on:
//
//	g:<i>:<j>:<seq>  the refs i..j-1 (one batched get), from stream sequence seq
//	c:<i>:<name>     ref i, by the consumer named
//	o:<key>          this append's rows, after key

// page is a Referrers page being filled.
type page struct {
	keys  []string
	limit int
	next  string // the cursor of the next page; "": this is the last
}

func (p *page) full() bool { return len(p.keys) >= p.limit }

// errPageFull stops a listing when the page is full.
var errPageFull = errors.New("page full")

// Referrers pages through the rows of table that meet rows of child (of
// every row of table when child is negative): the stream's, then this
// append's.
func (t *Tx) Referrers(ctx context.Context, v eventlog.Version, table, child int, refs []string, cursor string, limit int) ([]string, string, error) {
	if child >= 0 && len(refs) == 0 {
		return nil, "", nil
	}
	vt, err := t.base(ctx, v)
	if err != nil {
		return nil, "", err
	}
	want := map[string]bool{}
	for _, r := range refs {
		want[r] = true
	}
	filters := []string{basePrefix(v) + ".r." + strconv.Itoa(table) + ".*"}
	if child >= 0 {
		filters = filters[:0]
		for r := range want {
			filters = append(filters, refPrefix(v, table, child, r)+".*")
		}
		slices.Sort(filters)
	}
	bt := vt.base
	take := func(b *baseMsg) bool {
		if _, mine := bt.rows[table][b.Key]; mine {
			return false // this append's row: listed after the stream's
		}
		return child < 0 || want[b.Ref] // else another ref's hash
	}
	p := &page{limit: max(limit, 1)}
	if cursor == "" {
		cursor = "g:0:0:0"
		if bt.isCleared(table) {
			cursor = "o:"
		}
	}
	for cursor != "" {
		if p.full() {
			p.next = cursor
			break
		}
		if strings.HasPrefix(cursor, "o:") {
			vt.ownReferrers(table, child, want, cursor[2:], p)
			break
		}
		if cursor, err = vt.listFrom(ctx, t.log, filters, cursor, take, p); err != nil {
			return nil, "", err
		}
	}
	return p.keys, p.next, nil
}

// listFrom adds to p, from the cursor on, the committed rows under the
// filters that take accepts, and returns where it stopped: p is full, or
// at a ref past the last, "o:" (this append's rows come next).
func (vt *versionTx) listFrom(ctx context.Context, l *Log, filters []string, cursor string, take func(*baseMsg) bool, p *page) (string, error) {
	kind, rest, _ := strings.Cut(cursor, ":")
	parts := strings.Split(rest, ":")
	i, err := strconv.Atoi(parts[0])
	if err != nil || (kind != "g" && kind != "c") || (kind == "g" && len(parts) != 3) || (kind == "c" && len(parts) != 2) {
		return "", fmt.Errorf("invalid referrers cursor %q", cursor)
	}
	if i >= len(filters) {
		return "o:", nil
	}
	if kind == "c" {
		return vt.listByConsumer(ctx, i, parts[1], filters[i], take, p)
	}
	j, err1 := strconv.Atoi(parts[1])
	seq, err2 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || j < 0 || j > len(filters) {
		return "", fmt.Errorf("invalid referrers cursor %q", cursor)
	}
	if j <= i { // a new group: as many refs as one answer holds
		j = min(i+filtersPerRequest, len(filters))
	}
	for {
		next, err := vt.listGroup(ctx, l, filters, i, j, seq, take, p)
		if !errors.Is(err, errTooMany) {
			return next, err
		}
		if j-i == 1 {
			return vt.listByConsumer(ctx, i, "", filters[i], take, p)
		}
		j = i + (j-i)/2
	}
}

// listGroup lists the refs i..j-1 from stream sequence seq on.
func (vt *versionTx) listGroup(ctx context.Context, l *Log, filters []string, i, j int, seq uint64, take func(*baseMsg) bool, p *page) (string, error) {
	var stop uint64 // the first message the page had no room for
	err := vt.lastMsgsFrom(ctx, l, filters[i:j], seq, func(m lastMsg) error {
		if m.gone {
			return nil
		}
		b, err := decodeBase(m.data)
		if err != nil || !take(b) {
			return err
		}
		if p.full() {
			stop = m.seq
			return errPageFull
		}
		p.keys = append(p.keys, b.Key)
		return nil
	})
	if errors.Is(err, errPageFull) {
		return fmt.Sprintf("g:%d:%d:%d", i, j, stop), nil
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("g:%d:0:0", j), nil
}

// listByConsumer lists ref i through a consumer of its own (made when
// name is empty), kept until it has given every subject.
func (vt *versionTx) listByConsumer(ctx context.Context, i int, name, filter string, take func(*baseMsg) bool, p *page) (string, error) {
	bt := vt.base
	ls := bt.listings[name]
	if ls == nil {
		if name != "" {
			return "", fmt.Errorf("the referrers listing %s is not this append's", name)
		}
		var err error
		if ls, err = vt.openListing(ctx, []string{filter}); err != nil {
			return "", err
		}
		if bt.listings == nil {
			bt.listings = map[string]*listing{}
		}
		bt.listings[ls.name] = ls
	}
	for ls.left > 0 && !p.full() {
		err := ls.next(ctx, vt.was.baseSeq, p.limit-len(p.keys), func(_ string, b *baseMsg) error {
			if take(b) {
				p.keys = append(p.keys, b.Key)
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	if ls.left > 0 {
		return "c:" + strconv.Itoa(i) + ":" + ls.name, nil
	}
	delete(bt.listings, ls.name)
	vt.closeListing(ctx, ls)
	return fmt.Sprintf("g:%d:0:0", i+1), nil
}

// ownReferrers adds to p this append's rows that meet the refs (all of
// table's when child is negative), in key order after after.
func (vt *versionTx) ownReferrers(table, child int, want map[string]bool, after string, p *page) {
	var keys []string
	for key, e := range vt.base.rows[table] {
		if e.row == nil || key <= after {
			continue
		}
		if child >= 0 {
			if r, ok := e.refs[child]; !ok || !want[r] {
				continue
			}
		}
		keys = append(keys, key)
	}
	slices.Sort(keys)
	room := p.limit - len(p.keys)
	if len(keys) > room {
		keys = keys[:room]
		p.next = "o:" + keys[len(keys)-1]
	}
	p.keys = append(p.keys, keys...)
}

func decodeBase(data []byte) (*baseMsg, error) {
	var b baseMsg
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, errors.New("a base row of the event log does not read: " + err.Error())
	}
	return &b, nil
}

// listing is a consumer giving the last message of every subject under
// its filters, in sequence order, read a part at a time.
type listing struct {
	name string
	cons jetstream.Consumer
	left uint64    // messages it has not given yet
	came time.Time // when a fetch last gave messages (or the listing opened)
}

// openListing makes a listing's consumer; one just made may not answer
// yet (on a cluster, before it has a leader): it is asked again.
func (vt *versionTx) openListing(ctx context.Context, filters []string) (*listing, error) {
	rctx, cancel := request(ctx)
	defer cancel()
	cons, err := vt.base.stream.CreateConsumer(rctx, jetstream.ConsumerConfig{
		FilterSubjects: filters, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, Replicas: 1,
		InactiveThreshold: time.Minute}) // gone soon if it is left unfinished
	if err != nil {
		return nil, err
	}
	ls := &listing{name: cons.CachedInfo().Name, cons: cons, came: time.Now()}
	for try := 1; ; try++ {
		info, err := cons.Info(rctx)
		if err == nil {
			ls.left = info.NumPending // as many as the subjects: asked for exactly, a fetch does not wait
			return ls, nil
		}
		if !errors.Is(err, nats.ErrNoResponders) || try == 20 {
			vt.closeListing(ctx, ls)
			return nil, err
		}
		if err := pause(ctx, try); err != nil {
			return nil, err
		}
	}
}

func pause(ctx context.Context, try int) error {
	select {
	case <-time.After(time.Duration(try) * 50 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (vt *versionTx) closeListing(ctx context.Context, ls *listing) {
	dctx, cancel := request(context.WithoutCancel(ctx))
	defer cancel()
	_ = vt.base.stream.DeleteConsumer(dctx, ls.name)
}

// next calls each with up to n more of the listing's messages, skipping
// tombstones; a message past the committed sequence is of an append that
// has not committed.
func (ls *listing) next(ctx context.Context, committed uint64, n int, each func(subject string, b *baseMsg) error) error {
	var batch jetstream.MessageBatch
	for try := 1; ; try++ {
		var err error
		batch, err = ls.cons.Fetch(int(min(ls.left, uint64(n), 10000)), jetstream.FetchMaxWait(5*time.Second))
		if err == nil {
			break
		}
		if !errors.Is(err, nats.ErrNoResponders) || try == 20 {
			return err
		}
		if err := pause(ctx, try); err != nil {
			return err
		}
	}
	got := 0
	for m := range batch.Messages() {
		got++
		ls.left = max(ls.left, 1) - 1
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		if meta.NumPending == 0 {
			ls.left = 0
		}
		if meta.Sequence.Stream > committed {
			return eventlog.ErrConcurrentAppend // an append that has not committed (yet)
		}
		if m.Headers().Get(hdrOp) == "d" {
			continue
		}
		b, err := decodeBase(m.Data())
		if err != nil {
			return err
		}
		if err := each(m.Subject(), b); err != nil {
			return err
		}
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return err
	}
	if got == 0 {
		// Done only if the consumer says so: a fetch that timed out (a
		// busy server, a leader election) says nothing of what is left,
		// and a listing that ends early leaves base rows out.
		done, err := drained(ctx, ls.cons)
		if err != nil {
			return err
		}
		if done {
			ls.left = 0
		} else if time.Since(ls.came) > stallAfter {
			return fmt.Errorf("no message of the base state came for %v, with some left", stallAfter)
		}
	} else {
		ls.came = time.Now()
	}
	return nil
}

// committedList reads the last committed message, not a tombstone, of
// every subject under the filters, through a listing.
func (vt *versionTx) committedList(ctx context.Context, filters []string, each func(subject string, b *baseMsg) error) error {
	ls, err := vt.openListing(ctx, filters)
	if err != nil {
		return err
	}
	defer vt.closeListing(ctx, ls)
	for ls.left > 0 {
		if err := ls.next(ctx, vt.was.baseSeq, 10000, each); err != nil {
			return err
		}
	}
	return nil
}

// drained says whether a consumer has no message left to give: asked
// when a fetch came back empty. It cannot tell messages it sent that
// never arrived (a reconnect) from none.
func drained(ctx context.Context, cons jetstream.Consumer) (bool, error) {
	rctx, cancel := request(ctx)
	defer cancel()
	ci, err := cons.Info(rctx)
	if err != nil {
		return false, err
	}
	return ci.NumPending == 0, nil
}
