package replicator

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics of capture and apply (the default Prometheus registry).
var (
	metricCaptured = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "changes_total",
		Help: "Changes captured into the event log, per publication version."}, []string{"publication", "version"})
	metricCaptureLagBytes = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "lag_bytes",
		Help: "WAL the capture has yet to confirm: the server's WAL end minus the slot's confirmed position."}, []string{"slot"})
	metricCaptureLagSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "lag_seconds",
		Help: "Age of the oldest committed source transaction not yet in the event log (0 when none waits)."}, []string{"slot"})
	metricFillRows = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "first_fill_rows",
		Help: "Rows the current or last first fill of a publication version has read."}, []string{"publication", "version"})
	metricSlotRetained = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "slot_retained_wal_bytes",
		Help: "WAL the server keeps for the capture's slot (current WAL position minus the slot's restart position)."}, []string{"slot"})
	metricApplied = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "changes_applied_total",
		Help: "Changes applied to a subscription's target."}, []string{"target", "publication", "version"})
	metricLagSeconds = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "lag_seconds",
		Help: "How far a subscription's target is behind its source, in seconds."}, []string{"target", "publication", "version"})
	metricLagChanges = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "lag_changes",
		Help: "Changes in the event log a subscription has yet to apply."}, []string{"target", "publication", "version"})
	metricCopiedRows = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "copied_rows",
		Help: "Rows the current or last copy of a subscription has written."}, []string{"target", "publication", "version"})
	metricApplyErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "subscription", Name: "apply_errors_total",
		Help: "Failed attempts to copy or apply changes to a subscription's target."}, []string{"target", "publication", "version"})
)

func streamLabels(s Stream) []string { return []string{s.Publication, strconv.Itoa(s.Version)} }

func (w *worker) labels() []string {
	return []string{w.sub.target, w.sub.stream.Publication, strconv.Itoa(w.sub.stream.Version)}
}
