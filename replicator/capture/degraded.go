package capture

import (
	"fmt"
	"sync"
	"time"
)

// DefaultSlotStall is how long a slot may go without confirming, while
// WAL is pending, before the capture counts as degraded.
const DefaultSlotStall = 2 * time.Minute

// slotWatch follows the slot's confirmed position between checks: it
// says when the slot has not confirmed for longer than stall while the
// server has WAL after it, i.e. the capture is not moving and the owner's
// server keeps WAL for it.
type slotWatch struct {
	mu        sync.Mutex
	slot      string
	confirmed string // the slot's confirmed position as last seen
	pending   int64  // WAL after it, in bytes
	since     time.Time
}

// saw records a check of the slot at now; an empty confirmed means
// there is no slot (nothing is kept for it).
func (w *slotWatch) saw(slot, confirmed string, pending int64, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// The stall is counted from the first check that saw WAL pending after
	// the same confirmed position.
	if confirmed != w.confirmed || slot != w.slot || pending <= 0 || w.pending <= 0 {
		w.since = now
	}
	w.slot, w.confirmed, w.pending = slot, confirmed, pending
}

// stalled says why the slot counts as stalled at now ("" when it does
// not).
func (w *slotWatch) stalled(now time.Time, stall time.Duration) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.confirmed == "" || w.pending <= 0 || now.Sub(w.since) <= stall {
		return ""
	}
	return fmt.Sprintf("slot %s has not confirmed for %s (at %s) while %d bytes of WAL are pending: the owner's server keeps WAL for it",
		w.slot, now.Sub(w.since).Round(time.Second), w.confirmed, w.pending)
}

// Degraded says what of the capture works less than it should, by kind
// (setup, versions, slot), each with what is wrong; empty when nothing
// is. It never stops the sidecar serving: /readyz shows it beside its
// checks.
func (c *Runner) Degraded() map[string]string {
	d := map[string]string{}
	if p := c.Problem(); p != "" {
		d["capture_setup"] = p
	}
	if p := c.VersionProblems(); p != "" {
		d["capture_versions"] = p
	}
	if p := c.slotStalled(); p != "" {
		d["capture_slot"] = p
	}
	return d
}

func (c *Runner) slotStalled() string {
	stall := c.SlotStall
	if stall <= 0 {
		stall = DefaultSlotStall
	}
	return c.slot.stalled(time.Now(), stall)
}

// setDegradedMetric makes what Degraded says known in the metrics.
func (c *Runner) setDegradedMetric() {
	d := c.Degraded()
	for _, kind := range []string{"capture_setup", "capture_versions", "capture_slot"} {
		v := 0.0
		if d[kind] != "" {
			v = 1
		}
		metricDegraded.WithLabelValues(kind).Set(v)
	}
}
