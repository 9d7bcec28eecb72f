package capture

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Metrics of the capture (the default Prometheus registry).
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
	metricVersionFailed = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Name: "version_failed",
		Help: "1 for each publication version of this system that cannot be computed (failed; its problem is in rejot.publications)."}, []string{"publication", "version"})
	metricSlotRetained = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "slot_retained_wal_bytes",
		Help: "WAL the server keeps for the capture's slot (current WAL position minus the slot's restart position)."}, []string{"slot"})
	metricDegraded = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "capture", Name: "degraded",
		Help: "1 when the capture works less than it should, by kind: capture_setup (the database cannot be captured), capture_versions (versions left out or failed), capture_slot (the slot has not confirmed for a while with WAL pending); /readyz says why."}, []string{"kind"})
)

func versionLabels(v eventlog.Version) []string {
	return []string{v.Publication, strconv.Itoa(v.Number)}
}
