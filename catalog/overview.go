package catalog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Overview is the whole catalog at one moment, for people choosing what to
// subscribe to: every publication version with its columns and who
// subscribes, and the systems. Metadata only, never row data.
type Overview struct {
	// At is the catalog's clock when it was read, to judge last_seen by.
	At           time.Time            `json:"at"`
	Publications []PublicationVersion `json:"publications"`
	Systems      []SystemStatus       `json:"systems"`
}

// PublicationVersion is one version of a publication, as the catalog has it.
type PublicationVersion struct {
	Publication string `json:"publication"`
	Version     int    `json:"version"`
	Minor       int    `json:"minor"`
	Owner       string `json:"owner"`
	Database    string `json:"database"`
	Query       string `json:"query"`
	// Tables are every table the version reads, its root first.
	Tables      []string `json:"tables"`
	KeyColumns  []string `json:"key_columns"`
	Description string   `json:"description"`
	Status      string   `json:"status"` // active, deprecated, failed or retired
	// Problem says why a failed version cannot be computed, and the fix.
	Problem string `json:"problem,omitempty"`
	// Sunset is the date a deprecated version goes away (YYYY-MM-DD), or "".
	Sunset        string               `json:"sunset,omitempty"`
	Note          string               `json:"note,omitempty"`
	CreatedAt     time.Time            `json:"created_at"`
	UpdatedAt     time.Time            `json:"updated_at"`
	Columns       []Column             `json:"columns"`
	Subscriptions []SubscriptionStatus `json:"subscriptions"`
}

// SubscriptionStatus is one subscription and how it is doing, as its
// sidecar last reported.
type SubscriptionStatus struct {
	Target          string     `json:"target"`
	System          string     `json:"system"`
	Publication     string     `json:"publication"`
	Version         int        `json:"version"`
	Status          string     `json:"status"` // copying, streaming, stopped or failed
	CopiedRows      int64      `json:"copied_rows"`
	AppliedPosition *int64     `json:"applied_position"`
	LagSeconds      *float64   `json:"lag_seconds"`
	LagChanges      *int64     `json:"lag_changes"`
	LastAppliedAt   *time.Time `json:"last_applied_at"`
	Error           string     `json:"error,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
}

// SystemStatus is one system (one sidecar's database) and when it was last
// heard from.
type SystemStatus struct {
	Name     string    `json:"system"`
	Database string    `json:"database"`
	Address  string    `json:"address"`
	Version  string    `json:"version"`
	LastSeen time.Time `json:"last_seen"`
	// Problem says what is wrong with the system's setup, or "".
	Problem string `json:"problem,omitempty"`
	// Instances are the system's sidecar processes (rejot.instances),
	// the active one first.
	Instances []InstanceStatus `json:"instances,omitempty"`
}

// InstanceStatus is one sidecar process of a system.
type InstanceStatus struct {
	Address  string    `json:"address"`
	Role     string    `json:"role"` // active or standby
	Version  string    `json:"version"`
	LastSeen time.Time `json:"last_seen"`
}

// Overview reads the whole catalog in one read-only, repeatable-read
// transaction, so that the versions, columns, subscriptions and systems
// agree with each other.
func (c *Catalog) Overview(ctx context.Context) (*Overview, error) {
	if c.QueryTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.QueryTimeout)
		defer cancel()
	}
	var o *Overview
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			o, err = readOverview(ctx, tx)
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("cannot read the catalog: %w", err)
	}
	return o, nil
}

// Overview is Catalog.Overview on the current catalog.
func (l *Lazy) Overview(ctx context.Context) (*Overview, error) {
	c := l.cur.Load()
	if c == nil {
		return nil, ErrUnavailable
	}
	return c.Overview(ctx)
}

func readOverview(ctx context.Context, tx pgx.Tx) (*Overview, error) {
	o := &Overview{Publications: []PublicationVersion{}, Systems: []SystemStatus{}}
	if err := tx.QueryRow(ctx, "SELECT now()").Scan(&o.At); err != nil {
		return nil, err
	}
	var err error
	if o.Publications, err = readVersions(ctx, tx); err != nil {
		return nil, err
	}
	index := make(map[versionKey]*PublicationVersion, len(o.Publications))
	for i := range o.Publications {
		p := &o.Publications[i]
		index[versionKey{p.Publication, p.Version}] = p
	}
	if err := readColumns(ctx, tx, index); err != nil {
		return nil, err
	}
	if err := readSubscriptions(ctx, tx, index); err != nil {
		return nil, err
	}
	if o.Systems, err = readSystems(ctx, tx); err != nil {
		return nil, err
	}
	return o, nil
}

type versionKey struct {
	publication string
	version     int
}

func readVersions(ctx context.Context, tx pgx.Tx) ([]PublicationVersion, error) {
	rows, err := tx.Query(ctx, `SELECT publication, version, minor, owner, database, query, key_columns,
			description, CASE WHEN problem IS NOT NULL AND status <> 'retired' THEN 'failed' ELSE status END,
			sunset, note, created_at, updated_at, CASE WHEN status <> 'retired' THEN coalesce(problem, '') ELSE '' END,
			coalesce(tables, ARRAY[source])
		FROM rejot_catalog.publications ORDER BY publication, version`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (PublicationVersion, error) {
		p := PublicationVersion{Columns: []Column{}, Subscriptions: []SubscriptionStatus{}}
		var sunset pgtype.Date
		err := row.Scan(&p.Publication, &p.Version, &p.Minor, &p.Owner, &p.Database, &p.Query, &p.KeyColumns,
			&p.Description, &p.Status, &sunset, &p.Note, &p.CreatedAt, &p.UpdatedAt, &p.Problem, &p.Tables)
		if sunset.Valid && sunset.InfinityModifier == pgtype.Finite {
			p.Sunset = sunset.Time.Format(time.DateOnly)
		}
		return p, err
	})
}

func readColumns(ctx context.Context, tx pgx.Tx, index map[versionKey]*PublicationVersion) error {
	rows, err := tx.Query(ctx, `SELECT publication, version, name, type, type_oid, type_mod, is_key, nullable, since_minor
		FROM rejot_catalog.columns ORDER BY publication, version, position`)
	if err != nil {
		return err
	}
	var k versionKey
	var col Column
	_, err = pgx.ForEachRow(rows, []any{&k.publication, &k.version, &col.Name, &col.Type, &col.TypeOID, &col.TypeMod,
		&col.IsKey, &col.Nullable, &col.SinceMinor}, func() error {
		if p := index[k]; p != nil {
			p.Columns = append(p.Columns, col)
		}
		return nil
	})
	return err
}

func readSubscriptions(ctx context.Context, tx pgx.Tx, index map[versionKey]*PublicationVersion) error {
	// As rejot.subscriptions shows them: failed with their version.
	rows, err := tx.Query(ctx, `SELECT target, system, publication, version, status, copied_rows, applied_position,
			lag_seconds, lag_changes, last_applied_at, coalesce(error, ''), created_at
		FROM rejot.subscriptions ORDER BY publication, version, system, target`)
	if err != nil {
		return err
	}
	subs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (SubscriptionStatus, error) {
		var s SubscriptionStatus
		err := row.Scan(&s.Target, &s.System, &s.Publication, &s.Version, &s.Status, &s.CopiedRows, &s.AppliedPosition,
			&s.LagSeconds, &s.LagChanges, &s.LastAppliedAt, &s.Error, &s.CreatedAt)
		return s, err
	})
	for _, s := range subs {
		if p := index[versionKey{s.Publication, s.Version}]; p != nil {
			p.Subscriptions = append(p.Subscriptions, s)
		}
	}
	return err
}

func readSystems(ctx context.Context, tx pgx.Tx) ([]SystemStatus, error) {
	rows, err := tx.Query(ctx, `SELECT system, database, address, version, last_seen, coalesce(problem, '')
		FROM rejot_catalog.systems ORDER BY system`)
	if err != nil {
		return nil, err
	}
	systems, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (SystemStatus, error) {
		var s SystemStatus
		err := row.Scan(&s.Name, &s.Database, &s.Address, &s.Version, &s.LastSeen, &s.Problem)
		return s, err
	})
	if err != nil {
		return nil, err
	}
	return systems, readInstances(ctx, tx, systems)
}

// readInstances adds each system's instances, the active one first.
func readInstances(ctx context.Context, tx pgx.Tx, systems []SystemStatus) error {
	index := map[string]*SystemStatus{}
	for i := range systems {
		index[systems[i].Name] = &systems[i]
	}
	rows, err := tx.Query(ctx, `SELECT system, address, role, version, last_seen FROM rejot_catalog.instances
		ORDER BY system, role <> 'active', started_at`)
	if err != nil {
		return err
	}
	var system string
	var in InstanceStatus
	_, err = pgx.ForEachRow(rows, []any{&system, &in.Address, &in.Role, &in.Version, &in.LastSeen}, func() error {
		if s := index[system]; s != nil {
			s.Instances = append(s.Instances, in)
		}
		return nil
	})
	return err
}
