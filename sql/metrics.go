package sql

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

var metricCalls = promauto.NewCounterVec(prometheus.CounterOpts{
	Namespace: "rejot", Subsystem: "proxy", Name: "calls_total",
	Help: "Intercepted rejot calls, by function and outcome (ok, or the SQLSTATE of the error)."},
	[]string{"function", "outcome"})

// outcome is how a call ended, as a metric label.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	var e *pgerr.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return pgerr.InternalError
}
