package eventlog

import (
	"bytes"
	"io"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CopyProgress counts the rows of COPY text data (the form in which a
// first state enters the log and a subscriber copies it out) as they
// pass, one per newline (the format escapes newlines in values), into
// rows and a gauge; it calls report every 5 s and passes the data on to w
// (nowhere when nil).
type CopyProgress struct {
	w      io.Writer
	rows   *atomic.Int64
	gauge  prometheus.Gauge
	report func(rows int64)
	last   time.Time
}

// NewCopyProgress counts the rows written to w.
func NewCopyProgress(w io.Writer, rows *atomic.Int64, gauge prometheus.Gauge, report func(int64)) *CopyProgress {
	return &CopyProgress{w: w, rows: rows, gauge: gauge, report: report, last: time.Now()}
}

func (c *CopyProgress) Write(b []byte) (int, error) {
	n := c.rows.Add(int64(bytes.Count(b, []byte{'\n'})))
	c.gauge.Set(float64(n))
	if time.Since(c.last) > 5*time.Second {
		c.last = time.Now()
		c.report(n)
	}
	if c.w == nil {
		return len(b), nil
	}
	return c.w.Write(b)
}
