package natslog

import (
	"context"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Base states (join versions, eventlog/base.go) are not kept in
// JetStream yet: every method says so with eventlog.ErrNoBaseStates, and
// the capture fails a join version alone with it as its problem, while
// the system's other versions flow. docs/natslog.md says what keeping
// them would take.

// BaseAt: no base state was ever applied.
func (l *Log) BaseAt(ctx context.Context, v eventlog.Version, system string) (uint64, bool, error) {
	return 0, false, nil
}

// PutBase refuses: see above.
func (t *Tx) PutBase(ctx context.Context, v eventlog.Version, system string, lsn uint64, rows []eventlog.BaseRow) error {
	return eventlog.ErrNoBaseStates
}

// ClearBase refuses: see above.
func (t *Tx) ClearBase(ctx context.Context, v eventlog.Version, table int) error {
	return eventlog.ErrNoBaseStates
}

// Base refuses: see above.
func (t *Tx) Base(ctx context.Context, v eventlog.Version, table int, keys []string) (map[string][]eventlog.Value, error) {
	return nil, eventlog.ErrNoBaseStates
}

// Referrers refuses: see above.
func (t *Tx) Referrers(ctx context.Context, v eventlog.Version, table, child int, refs []string, after string, limit int) ([]string, error) {
	return nil, eventlog.ErrNoBaseStates
}
