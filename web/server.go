// Package web is the sidecar's HTTP side (--http): Prometheus metrics,
// health and readiness for orchestrators, and the catalog page people look
// at to choose what to subscribe to.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// ErrStandby is what a Probe returns for a part that does not run in this
// instance because another one runs it (a standby's capture and apply):
// /readyz shows "standby" and stays ready.
const ErrStandby = Advisory("standby")

// Check is one condition of readiness: Probe returns nil when it holds,
// an Advisory (ErrStandby when another instance runs it) when it does not
// but the sidecar stays ready, another error when it is not ready.
type Check struct {
	Name  string
	Probe func(context.Context) error // nil, an error, or an Advisory
}

// Advisory is what a probe says that is not "ok" but leaves the sidecar
// ready: what it cannot do (or leaves to another instance) does not stop
// it relaying and answering calls.
type Advisory string

func (a Advisory) Error() string { return string(a) }

// Server serves /metrics, /healthz, /readyz and, when Page is set, the
// catalog page at /.
type Server struct {
	Checks []Check
	// Degraded, when set, says what works less than it should without
	// making the sidecar unready (by name, what is wrong): /readyz shows
	// it and stays 200.
	Degraded func() map[string]string
	Page     http.Handler
	Logger   zerolog.Logger

	srv       *http.Server
	lastReady readyCache
}

// readyTTL is how long one evaluation of the checks answers /readyz. The
// port has no authentication, and the upstream check opens a connection
// to the database (what a client would meet: no free slot, a refused
// role): without it, whoever reaches the port could make the sidecar
// open connections as fast as it asks.
const readyTTL = time.Second

// readyCache holds the last evaluation and the one in flight: requests
// at once share one, requests within readyTTL of it get its result.
type readyCache struct {
	mu     sync.Mutex
	at     time.Time
	res    readiness
	status int
	wait   chan struct{} // closed when the evaluation in flight ends
}

// Handler is the server's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if s.Page != nil {
		mux.Handle("/", s.Page)
	}
	return mux
}

// readiness is /readyz's body: what holds and what does not.
type readiness struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"` // "ok", "standby" or what is wrong
	// Degraded is what works less than it should, ready or not.
	Degraded map[string]string `json:"degraded,omitempty"`
}

// ready answers /readyz from one evaluation of the checks at most every
// readyTTL, shared by the requests that come while it runs.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	c := &s.lastReady
	for {
		c.mu.Lock()
		if !c.at.IsZero() && time.Since(c.at) < readyTTL {
			res, status := c.res, c.status
			c.mu.Unlock()
			writeJSON(w, status, res)
			return
		}
		if wait := c.wait; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-r.Context().Done():
				return
			}
		}
		wait := make(chan struct{})
		c.wait = wait
		c.mu.Unlock()
		res, status := s.evaluateShared(c, wait)
		writeJSON(w, status, res)
		return
	}
}

// evaluateShared runs the checks for every request waiting on wait, and
// always lets them go, even if a check panics (net/http recovers the
// request; the next one must not wait for an evaluation that ended). Its
// result is as old as its start.
func (s *Server) evaluateShared(c *readyCache, wait chan struct{}) (res readiness, status int) {
	started := time.Now()
	done := false
	defer func() {
		c.mu.Lock()
		if done {
			c.at, c.res, c.status = started, res, status
		}
		c.wait = nil
		c.mu.Unlock()
		close(wait)
	}()
	res, status = s.evaluate()
	done = true
	return res, status
}

// checkTimeout bounds one evaluation: a check that has not answered by
// then is not ready, whether or not it heeds its context.
const checkTimeout = 2 * time.Second

// evaluate runs every check at once, each within checkTimeout.
func (s *Server) evaluate() (readiness, int) {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	res := readiness{Ready: true, Checks: map[string]string{}}
	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, len(s.Checks)) // a late one never blocks
	for i, c := range s.Checks {
		go func() { answers <- answer{i, c.Probe(ctx)} }()
	}
	pending := len(s.Checks)
	answered := make([]bool, len(s.Checks))
	for pending > 0 {
		select {
		case a := <-answers:
			pending--
			answered[a.i] = true
			name := s.Checks[a.i].Name
			if a.err != nil {
				var advisory Advisory
				res.Ready = res.Ready && errors.As(a.err, &advisory)
				res.Checks[name] = a.err.Error()
				continue
			}
			res.Checks[name] = "ok"
		case <-ctx.Done():
			for i, c := range s.Checks {
				if !answered[i] {
					res.Ready = false
					res.Checks[c.Name] = "no answer within " + checkTimeout.String()
				}
			}
			pending = 0
		}
	}
	if s.Degraded != nil {
		if d := s.Degraded(); len(d) > 0 {
			res.Degraded = d
		}
	}
	status := http.StatusOK
	if !res.Ready {
		status = http.StatusServiceUnavailable
	}
	return res, status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.Logger.Info().Str("http", ln.Addr().String()).Msg("serving metrics, health and the catalog page")
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server, letting requests in flight finish.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}
