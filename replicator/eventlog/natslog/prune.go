package natslog

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Readers' positions are a bucket: key <version>.<reader in hex>.
func readerKey(v eventlog.Version, reader string) string {
	return versionToken(v) + "." + hex.EncodeToString([]byte(reader))
}

// SetReader records a subscriber's position; a negative one forgets it.
func (l *Log) SetReader(ctx context.Context, v eventlog.Version, reader string, position int64) error {
	ctx, cancel := request(ctx)
	defer cancel()
	if position < 0 {
		err := l.readers.Delete(ctx, readerKey(v, reader))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return err
	}
	_, err := l.readers.Put(ctx, readerKey(v, reader), []byte(strconv.FormatInt(position, 10)))
	return err
}

// KeepReaders forgets the readers named prefix… other than keep.
func (l *Log) KeepReaders(ctx context.Context, prefix string, keep []string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lister, err := l.readers.ListKeys(ctx)
	if err != nil {
		return err
	}
	var drop []string
	for key := range lister.Keys() {
		_, enc, ok := strings.Cut(key, ".")
		name, err := hex.DecodeString(enc)
		if !ok || err != nil {
			continue
		}
		if r := string(name); strings.HasPrefix(r, prefix) && !slices.Contains(keep, r) {
			drop = append(drop, key)
		}
	}
	for _, key := range drop {
		if err := l.readers.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
	}
	return nil
}

// minReader is the lowest position of a version's readers; ok is false
// when it has none.
func (l *Log) minReader(ctx context.Context, v eventlog.Version) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lister, err := l.readers.ListKeysFiltered(ctx, versionToken(v)+".*")
	if err != nil {
		return 0, false, err
	}
	var keys []string
	for key := range lister.Keys() {
		keys = append(keys, key)
	}
	// The lister ends its keys without an error when its time is up:
	// then some readers may be missing, and pruning past them is wrong.
	if err := ctx.Err(); err != nil {
		return 0, false, fmt.Errorf("cannot list the version's readers: %w", err)
	}
	var low int64
	found := false
	for _, key := range keys {
		e, err := l.readers.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return 0, false, err
		}
		p, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if err != nil {
			return 0, false, err
		}
		if !found || p < low {
			low, found = p, true
		}
	}
	return low, found, nil
}

// Prune drops the runs of a version that every reader has passed (all
// of them when it has none) and the state holds, keeping the last marker
// (what appends learn the version from); it returns how many changes it
// dropped.
func (l *Log) Prune(ctx context.Context, v eventlog.Version) (int64, error) {
	s, ok, err := l.changeStreamOf(ctx, v)
	if !ok {
		return 0, err
	}
	upto, err := l.pruneMark(ctx, v) // changes go only once the state holds them
	if err != nil {
		return 0, fmt.Errorf("cannot compact the state of %s version %d: %w", v.Publication, v.Number, err)
	}
	if low, ok, err := l.minReader(ctx, v); err != nil {
		return 0, err
	} else if ok {
		upto = min(upto, low)
	}
	next, firstSeq, err := runHolding(ctx, s, v, upto+1)
	if err != nil {
		return 0, err
	}
	var keepFrom uint64
	var dropped int64
	if next != nil {
		keepFrom, dropped = next.from, next.start-1
	} else {
		last, err := lastRun(ctx, s, v)
		if err != nil || last == nil {
			return 0, err
		}
		keepFrom, dropped = last.seq, last.head
	}
	if keepFrom <= firstSeq {
		return 0, nil
	}
	first, err := firstPosition(ctx, s, v, firstSeq)
	if err != nil {
		return 0, err
	}
	if err := purge(ctx, s, jetstream.WithPurgeSequence(keepFrom)); err != nil {
		return 0, fmt.Errorf("cannot prune the change stream of %s version %d: %w", v.Publication, v.Number, err)
	}
	return max(dropped-first+1, 0), nil
}

// firstPosition is the position of the first change the stream holds.
func firstPosition(ctx context.Context, s jetstream.Stream, v eventlog.Version, firstSeq uint64) (int64, error) {
	r, err := runAfter(ctx, s, v, firstSeq)
	if err != nil || r == nil {
		return 1, err
	}
	if r.from >= firstSeq {
		return r.start, nil
	}
	return r.head + 1, nil // a marker kept alone: its run is gone
}

// Readers returns the names of a version's readers and their positions:
// what holds its changes from pruning.
func (l *Log) Readers(ctx context.Context, v eventlog.Version) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lister, err := l.readers.ListKeysFiltered(ctx, versionToken(v)+".*")
	if err != nil {
		return nil, err
	}
	var keys []string
	for key := range lister.Keys() {
		keys = append(keys, key)
	}
	// As in minReader: a listing whose time ran out is not all of them.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cannot list the version's readers: %w", err)
	}
	out := map[string]int64{}
	for _, key := range keys {
		_, enc, _ := strings.Cut(key, ".")
		name, err := hex.DecodeString(enc)
		if err != nil {
			continue
		}
		e, err := l.readers.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if err != nil {
			return nil, err
		}
		out[string(name)] = p
	}
	return out, nil
}
