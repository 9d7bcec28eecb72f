package lease

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metricActive is 1 while this instance holds its system's lease, 0 while
// it stands by (the default Prometheus registry).
var metricActive = promauto.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "rejot", Subsystem: "instance", Name: "active",
	Help: "1 while this sidecar holds its system's lease (it captures and applies), 0 while it stands by."}, []string{"system"})

func (l *Lease) setActive(active bool) {
	l.active.Store(active)
	v := 0.0
	if active {
		v = 1
	}
	metricActive.WithLabelValues(l.System).Set(v)
}
