package catalog

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Roles of an instance (rejot.instances.role).
const (
	RoleActive  = "active"  // holds the lease: runs the capture and the applies
	RoleStandby = "standby" // relays traffic, answers calls, waits for the lease
)

// Instance is one sidecar process of a system: several may front one
// database, one of them active.
type Instance struct {
	ID        string // a random UUID made at start
	StartedAt time.Time
	Role      string // RoleActive or RoleStandby
}

// NewInstance makes this process's instance: a random id, started now.
func NewInstance() Instance {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // the RFC 4122 variant
	return Instance{ID: fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), StartedAt: time.Now(), Role: RoleStandby}
}

// DefaultStaleAfter is how long an instance may go without a heartbeat
// before the others' heartbeats remove its row.
const DefaultStaleAfter = time.Minute

// HeartbeatInstance records instance in of system s as seen now (its
// address, role and version), and removes the rows of the system's
// instances not seen for staleAfter. An active instance also removes the
// row of any other instance still shown active (it lost the lease: gone,
// or about to say it is standby) and makes the system's address its own.
// Only the system's catalog role may do so (rejot_catalog.guard_instance).
func (c *Catalog) HeartbeatInstance(ctx context.Context, s System, in Instance, staleAfter time.Duration) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO rejot_catalog.instances (instance, system, address, role, version, started_at, last_seen)
			VALUES ($1::uuid, $2, $3, $4, $5, $6, now())
			ON CONFLICT (instance) DO UPDATE SET address = EXCLUDED.address, role = EXCLUDED.role,
				version = EXCLUDED.version, last_seen = now()`,
			in.ID, s.Name, s.Address, in.Role, s.Version, in.StartedAt); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM rejot_catalog.instances
			WHERE system = $1 AND instance <> $2::uuid AND (last_seen < now() - $3::interval OR ($4 AND role = 'active'))`,
			s.Name, in.ID, staleAfter.String(), in.Role == RoleActive); err != nil {
			return err
		}
		if in.Role != RoleActive {
			return nil
		}
		_, err := tx.Exec(ctx, "UPDATE rejot_catalog.systems SET address = $2 WHERE system = $1 AND address IS DISTINCT FROM $2",
			s.Name, s.Address)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot record instance %s of system %q: %w", in.ID, s.Name, err)
	}
	return nil
}

// RemoveInstance removes an instance's row: it is shutting down.
func (c *Catalog) RemoveInstance(ctx context.Context, system, id string) error {
	_, err := c.pool.Exec(ctx, "DELETE FROM rejot_catalog.instances WHERE system = $1 AND instance = $2::uuid", system, id)
	return err
}
