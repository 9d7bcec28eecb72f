package web

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rejot-dev/rejot/catalog"
)

// view is what the page template renders.
type view struct {
	*catalog.Overview
	Err     string   // why the catalog cannot be shown, or ""
	Lineage *lineage // nil when nothing is published
}

func newView(o *catalog.Overview, err error) *view {
	if err != nil {
		return &view{Err: unavailableMessage(err)}
	}
	return &view{Overview: o, Lineage: layoutLineage(o)}
}

func (v *view) httpStatus() int {
	if v.Err != "" {
		return http.StatusServiceUnavailable
	}
	return http.StatusOK
}

// Subscriptions counts the subscriptions of every version.
func (v *view) Subscriptions() int {
	n := 0
	for _, p := range v.Publications {
		n += len(p.Subscriptions)
	}
	return n
}

// A system not heard from for this long is shown as not seen: sidecars
// heartbeat every 10 seconds.
const staleAfter = 35 * time.Second

var funcs = template.FuncMap{
	"anchor":   anchor,
	"status":   statusClass,
	"duration": formatSeconds,
	"count":    formatCount,
	"when":     formatTime,
	"whenp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return formatTime(*t)
	},
	"changes": func(n *int64) string {
		if n == nil {
			return "—"
		}
		return formatCount(*n)
	},
	"position": func(n *int64) string {
		if n == nil {
			return "—"
		}
		return strconv.FormatInt(*n, 10)
	},
	"edgeStatuses": func() []string {
		return []string{"own", "streaming", "copying", "stalled", "stopped", "failed", "unknown"}
	},
	"dotX":  func(w int) int { return w - 14 },
	"stale": func(at, seen time.Time) bool { return at.Sub(seen) > staleAfter },
	"since": func(at, t time.Time) string { return formatSeconds(ptr(at.Sub(t).Seconds())) },
}

func ptr[T any](v T) *T { return &v }

// anchor makes a publication version's element id.
func anchor(publication string, version int) string {
	var b strings.Builder
	b.WriteString("v-")
	for _, r := range strings.ToLower(publication) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "-%x-", r)
		}
	}
	return b.String() + "-" + strconv.Itoa(version)
}

// statusClass is a status as a CSS class: only the catalog's known ones.
func statusClass(s string) string {
	switch s {
	case "active", "deprecated", "retired", "copying", "streaming", "stalled", "stopped", "failed":
		return s
	}
	return "unknown"
}

// formatSeconds says how long, at a precision a person reads at a glance.
func formatSeconds(s *float64) string {
	switch {
	case s == nil || math.IsNaN(*s):
		return "—"
	case *s < 0.001:
		return "0 ms"
	case *s < 1:
		return fmt.Sprintf("%.0f ms", *s*1000)
	case *s < 10:
		return fmt.Sprintf("%.1f s", *s)
	case *s < 120:
		return fmt.Sprintf("%.0f s", *s)
	case *s < 2*3600:
		return fmt.Sprintf("%.0f min", *s/60)
	case *s < 2*86400:
		return fmt.Sprintf("%.0f h", *s/3600)
	}
	return fmt.Sprintf("%.0f days", *s/86400)
}

// formatCount writes a count with thousands separators.
func formatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// subscriptionSummary says in a few words how a subscription is doing.
func subscriptionSummary(s catalog.SubscriptionStatus) string {
	switch s.Status {
	case "streaming":
		switch {
		case s.LagChanges != nil && *s.LagChanges == 0:
			return "streaming · caught up"
		case s.LagChanges != nil:
			return "streaming · " + formatCount(*s.LagChanges) + " behind · lag " + formatSeconds(s.LagSeconds)
		case s.LagSeconds != nil:
			return "streaming · lag " + formatSeconds(s.LagSeconds)
		}
		return "streaming"
	case "stalled":
		if s.LagChanges != nil {
			return "stalled · " + formatCount(*s.LagChanges) + " behind"
		}
		return "stalled"
	case "copying":
		return "copying · " + formatCount(s.CopiedRows) + " rows"
	}
	return s.Status
}
