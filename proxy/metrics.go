package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics of the wire-protocol front (the default Prometheus registry).
var (
	metricConnections = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "rejot", Subsystem: "proxy", Name: "client_connections",
		Help: "Client connections open now."})
	metricConnectionsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "proxy", Name: "client_connections_total",
		Help: "Client connections accepted."})
	metricUpstreamErrors = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "rejot", Subsystem: "proxy", Name: "upstream_errors_total",
		Help: "Connections to the upstream database that could not be opened."})
)
