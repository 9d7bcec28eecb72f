package capture

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// The runner's record of failed versions (see failure.go): which are left
// out of the capture, which are being filled again, and when one whose
// projection errors is tried again.

// failure is a version that cannot be computed.
type failure struct {
	VersionProblem
	definition string // of the source that failed ("" when none loads)
	retryAt    time.Time
	backoff    time.Duration
	// retrying: it can be computed again, and is captured again; it
	// stays failed until its state is filled again (Mended).
	retrying bool
	marked   bool // the log records that its state failed
}

const (
	retryFailedFirst = 30 * time.Second
	retryFailedMax   = 10 * time.Minute
)

func (c *Runner) retryFailed() time.Duration {
	if c.RetryFailed > 0 {
		return c.RetryFailed
	}
	return retryFailedFirst
}

// failed records that a version cannot be computed (from the check of the
// record, or from the reader capturing it).
func (c *Runner) failed(p VersionProblem, definition string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failedLocked(p, definition)
}

func (c *Runner) failedLocked(p VersionProblem, definition string) {
	if c.failures == nil {
		c.failures = map[eventlog.Version]*failure{}
	}
	f := c.failures[p.Version]
	if f == nil || f.retrying {
		c.generation++
	}
	switch {
	case f == nil:
		f = &failure{backoff: c.retryFailed()}
		c.failures[p.Version] = f
	case f.retrying && !p.Schema && f.definition == definition:
		f.backoff = min(2*f.backoff, retryFailedMax) // it failed again as it was
	case f.definition != definition:
		f.backoff = c.retryFailed()
	}
	if f.Problem != p.Problem || f.retrying {
		c.Logger.Error().Str("system", c.System).Str("publication", p.Version.Publication).Int("version", p.Version.Number).
			Str("problem", p.Problem).Msg("publication version failed")
	}
	f.VersionProblem, f.definition, f.retrying = p, definition, false
	f.retryAt = time.Now().Add(f.backoff)
	metricVersionFailed.WithLabelValues(versionLabels(p.Version)...).Set(1)
}

// mended hears that a reader which captures v has begun with v's state
// whole in the log (filled again if it had failed). A failure the runner
// recorded before that reader was started (retrying) is over; one heard
// of since (not retrying) is newer than the reader's start and stands.
func (c *Runner) mended(v eventlog.Version) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failures[v]
	if !ok || !f.retrying {
		return
	}
	c.Logger.Info().Str("system", c.System).Str("publication", v.Publication).Int("version", v.Number).
		Msg("publication version mended: its state is whole again")
	delete(c.failures, v)
	metricVersionFailed.DeleteLabelValues(versionLabels(v)...)
}

// screen sorts the loaded sources into those to capture and those that
// failed: a version fails while it does not verify against the live
// schema; one whose projection errored waits for its backoff (or a new
// definition) before it is tried again. A version the log records as
// failed (before a restart) stays failed until it is filled again.
func (c *Runner) screen(ctx context.Context, sources []Source, problems []VersionProblem) ([]Source, error) {
	seen := map[eventlog.Version]bool{}
	c.mu.Lock()
	for _, p := range problems {
		seen[p.Version] = true
		c.failedLocked(p, "")
	}
	c.mu.Unlock()
	var out []Source
	for _, src := range sources {
		seen[src.Version] = true
		if err := c.recall(ctx, &src); err != nil {
			return nil, err
		}
		err := src.verify(ctx, c.conn)
		if ve, ok := asVersionError(err); ok {
			c.failed(VersionProblem{Version: src.Version, Problem: problemText(ve), Schema: true}, src.Definition())
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cannot check publication %s version %d: %w", src.Version.Publication, src.Version.Number, err)
		}
		if c.retry(&src) {
			out = append(out, src)
		}
	}
	c.mu.Lock()
	for v := range c.failures {
		if !seen[v] { // retired
			delete(c.failures, v)
			metricVersionFailed.DeleteLabelValues(versionLabels(v)...)
		}
	}
	c.screened = c.screened || c.Log != nil // the log was asked (recall)
	c.mu.Unlock()
	return out, nil
}

// retry says whether a version that verifies is captured: yes, unless it
// failed in its projection and waits for its backoff with the same
// definition.
func (c *Runner) retry(src *Source) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.failures[src.Version]
	if f == nil || f.retrying {
		return true
	}
	if !f.Schema && f.definition == src.Definition() && time.Now().Before(f.retryAt) {
		return false
	}
	f.retrying = true
	return true
}

// recall learns, once per version after a start, whether the log records
// it as failed: it is then failed until filled again.
func (c *Runner) recall(ctx context.Context, src *Source) error {
	c.mu.Lock()
	_, known := c.failures[src.Version]
	recalled := c.recalled[src.Version]
	c.mu.Unlock()
	if known || recalled || c.Log == nil {
		return nil
	}
	_, definition, ok, err := c.Log.Filled(ctx, src.Version, c.System)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recalled == nil {
		c.recalled = map[eventlog.Version]bool{}
	}
	c.recalled[src.Version] = true
	if ok && strings.HasPrefix(definition, failedMark) {
		c.failedLocked(VersionProblem{Version: src.Version, Problem: strings.TrimPrefix(definition, failedMark), Schema: true}, "")
		c.failures[src.Version].marked = true
	}
	return nil
}

// markFailed records in the log that the state of each version left out
// failed, before a reader runs without it: its state is filled again
// when it comes back, whatever happens meanwhile.
func (c *Runner) markFailed(ctx context.Context) error {
	for _, p := range c.toMark() {
		lsn, definition, ok, err := c.Log.Filled(ctx, p.Version, c.System)
		if err != nil {
			return err
		}
		if ok && !strings.HasPrefix(definition, failedMark) {
			tx, err := c.Log.Begin(ctx)
			if err != nil {
				return err
			}
			err = tx.SetFilled(ctx, p.Version, c.System, failedMark+p.Problem, lsn)
			if err == nil {
				_, err = tx.Commit(ctx)
			}
			tx.Rollback(context.WithoutCancel(ctx))
			if err != nil {
				return fmt.Errorf("cannot record in the event log that a version failed: %w", err)
			}
		}
		c.mu.Lock()
		if f := c.failures[p.Version]; f != nil && !f.retrying {
			f.marked = true
		}
		c.mu.Unlock()
	}
	return nil
}

func (c *Runner) toMark() []VersionProblem {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []VersionProblem
	for _, f := range c.failures {
		if !f.retrying && !f.marked {
			out = append(out, f.VersionProblem)
		}
	}
	return out
}

// FailedVersions are the publication versions that cannot be computed
// now, with why and the fix, by publication and version: the catalog
// shows them (rejot.publications' status and problem), and so may a
// health check. A version stays in it until its state is filled again.
// It is nil until the capture has looked at the owner's record and the
// event log once since it started (a version failed before a restart is
// not known before), and not nil after.
func (c *Runner) FailedVersions() []VersionProblem {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.screened {
		return nil
	}
	out := make([]VersionProblem, 0, len(c.failures))
	for _, f := range c.failures {
		out = append(out, f.VersionProblem)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Version, out[j].Version
		return a.Publication < b.Publication || a.Publication == b.Publication && a.Number < b.Number
	})
	return out
}
