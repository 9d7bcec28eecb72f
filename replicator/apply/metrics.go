package apply

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics of the apply (the default Prometheus registry).
var (
	metricApplied = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "changes_applied_total",
		Help: "Changes applied to a subscription's target."}, []string{"target", "publication", "version"})
	metricLagSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "lag_seconds",
		Help: "How far a subscription's target is behind its source, in seconds."}, []string{"target", "publication", "version"})
	metricLagChanges = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "lag_changes",
		Help: "Changes in the event log a subscription has yet to apply."}, []string{"target", "publication", "version"})
	metricStalled = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "stalled",
		Help: "1 while a subscription is behind its log and has not advanced for a while (rejot.subscriptions says why), else 0."},
		[]string{"target", "publication", "version"})
	metricCopiedRows = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "copied_rows",
		Help: "Rows the current or last copy of a subscription has written."}, []string{"target", "publication", "version"})
	metricApplyErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "apply_errors_total",
		Help: "Failed attempts to copy or apply changes to a subscription's target."}, []string{"target", "publication", "version"})
)

func (w *worker) labels() []string {
	return []string{w.sub.target, w.sub.version.Publication, strconv.Itoa(w.sub.version.Number)}
}
