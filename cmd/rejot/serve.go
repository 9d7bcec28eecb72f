package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/internal/lease"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/internal/retry"
	"github.com/rejot-dev/rejot/proxy"
	"github.com/rejot-dev/rejot/replicator/apply"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
	"github.com/rejot-dev/rejot/sql"
	"github.com/rejot-dev/rejot/web"
	"github.com/rs/zerolog"
)

type serveConfig struct {
	upstream, listen, name, catalog, eventLog, httpAddr string
	tlsCert, tlsKey, logLevel                           string
	startupTimeout, shutdownTimeout, callWait           time.Duration
}

// parseServeFlags reads flags, each defaulting to its REJOT_* variable.
func parseServeFlags(args []string) (*serveConfig, error) {
	c := &serveConfig{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	str := func(p *string, name, def, help string) {
		fs.StringVar(p, name, envOr(name, def), help+" (env "+envName(name)+")")
	}
	str(&c.upstream, "upstream", "", "connection URL of the database this sidecar fronts (required)")
	str(&c.listen, "listen", ":6432", "address clients connect to")
	str(&c.name, "name", "", "system name (default: the upstream database's name)")
	str(&c.catalog, "catalog", "", "catalog database URL (default: database rejot on the upstream's server)")
	str(&c.eventLog, "log", "", "event log URL (default: the catalog)")
	str(&c.httpAddr, "http", ":9187", "metrics and catalog page address, or off")
	str(&c.tlsCert, "tls-cert", "", "certificate file for client TLS")
	str(&c.tlsKey, "tls-key", "", "key file for client TLS")
	str(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	timeout := envOr("startup-timeout", "60s")
	fs.Func("startup-timeout", "time a client has to finish connecting, default "+timeout+" (env REJOT_STARTUP_TIMEOUT)",
		func(v string) error { timeout = v; return nil })
	shutdown := envOr("shutdown-timeout", "30s")
	fs.Func("shutdown-timeout", "on SIGTERM, how long open transactions may take to finish, default "+shutdown+" (env REJOT_SHUTDOWN_TIMEOUT)",
		func(v string) error { shutdown = v; return nil })
	callWait := envOr("call-wait", sql.DefaultStartWait.String())
	fs.Func("call-wait", "how long a rejot call waits for what it needs (schema _rejot installed, the catalog connected) before it fails with 57P03, default "+callWait+" (env REJOT_CALL_WAIT)",
		func(v string) error { callWait = v; return nil })
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.upstream == "" {
		return nil, errors.New("--upstream is required (or REJOT_UPSTREAM), e.g. --upstream postgres://app@localhost:5432/shop")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		return nil, fmt.Errorf("invalid --startup-timeout %q", timeout)
	}
	c.startupTimeout = d
	if c.shutdownTimeout, err = time.ParseDuration(shutdown); err != nil || c.shutdownTimeout < 0 {
		return nil, fmt.Errorf("invalid --shutdown-timeout %q", shutdown)
	}
	if c.callWait, err = time.ParseDuration(callWait); err != nil || c.callWait <= 0 {
		return nil, fmt.Errorf("invalid --call-wait %q", callWait)
	}
	return c, nil
}

func envName(flagName string) string {
	return "REJOT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func envOr(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
}

func serve(ctx context.Context, args []string) error {
	c, err := parseServeFlags(args)
	if err != nil {
		return err
	}
	log, err := newLogger(c.logLevel)
	if err != nil {
		return err
	}
	if path := os.Getenv("REJOT_CPUPROFILE"); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stop()
	}
	sc, err := newSidecar(c, log)
	if err != nil {
		return err
	}
	for _, w := range transportWarnings(c.listen, c.tlsCert != "", map[string]string{
		"upstream": c.upstream, "catalog": c.catalog, "log": c.eventLog}) {
		log.Warn().Msg(w)
	}
	if c.catalog == "" {
		log.Warn().Str("catalog", defaultCatalogServer(c.upstream)).
			Msg("no --catalog given: the catalog is the database rejot on the upstream's server; " +
				"sidecars of databases on other servers see only publications in a catalog they share: give every sidecar the same --catalog")
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("cannot listen: %w", err)
	}
	if c.httpAddr != "" && c.httpAddr != "off" {
		hl, err := net.Listen("tcp", c.httpAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("cannot listen for HTTP on %s (--http; off disables it): %w", c.httpAddr, err)
		}
		sc.http = sc.httpServer(c)
		sc.httpLn = hl
	}
	return sc.run(ctx, ln)
}

// sidecar is the parts of a running sidecar, wired.
type sidecar struct {
	srv        *proxy.Server
	lazy       *catalog.Lazy
	applier    *catalog.Applier
	capture    *capture.Runner
	subscriber *apply.Subscriber
	// lease makes one instance of the system active: it alone runs the
	// capture and the applies; the others relay and answer calls.
	lease   *lease.Lease
	install *installer
	log     zerolog.Logger
	// shutdownTimeout bounds how long open transactions may take to
	// finish on shutdown.
	shutdownTimeout time.Duration
	eventLog        *sharedLog
	http            *web.Server // nil with --http off
	httpLn          net.Listener
}

// httpServer makes the HTTP side: metrics, health, readiness (upstream,
// catalog and event log answer, _rejot is installed: calls can be served;
// capture and apply loops run) with what is degraded without taking the
// sidecar out of service (a capture that leaves versions out, a slot that
// does not confirm), the catalog page.
func (sc *sidecar) httpServer(c *serveConfig) *web.Server {
	running := func(name string, f func() bool) func(context.Context) error {
		return func(context.Context) error {
			if !sc.lease.Active() {
				return web.ErrStandby
			}
			if !f() {
				return errors.New(name + " is not running")
			}
			return nil
		}
	}
	return &web.Server{Logger: sc.log, Page: web.CatalogPage(sc.lazy), Degraded: sc.capture.Degraded, Checks: []web.Check{
		{Name: "upstream", Probe: func(ctx context.Context) error {
			conn, err := pgx.Connect(ctx, c.upstream)
			if err != nil {
				return err
			}
			return conn.Close(ctx)
		}},
		{Name: "catalog", Probe: sc.lazy.Ping},
		{Name: "schema", Probe: func(context.Context) error {
			if p := sc.install.Problem(); p != "" {
				return errors.New(p)
			}
			if what := sc.install.waiting(); what != "" {
				return errors.New(what)
			}
			return nil
		}},
		{Name: "event_log", Probe: func(ctx context.Context) error {
			l, err := sc.eventLog.open(ctx)
			if err != nil {
				return err
			}
			return l.Ping(ctx)
		}},
		// A server that cannot run the capture (wal_level, the role's
		// REPLICATION) is said, without taking the proxy out of service.
		{Name: "capture", Probe: func(ctx context.Context) error {
			if err := running("capture", sc.capture.Running)(ctx); err != nil {
				return err
			}
			if p := sc.capture.Problem(); p != "" {
				return web.Advisory(p)
			}
			return nil
		}},
		{Name: "apply", Probe: running("apply", sc.subscriber.Running)},
	}}
}

func newSidecar(c *serveConfig, log zerolog.Logger) (*sidecar, error) {
	up, err := proxy.ParseUpstream(c.upstream)
	if err != nil {
		return nil, err
	}
	lazy, err := catalogFor(c, log)
	if err != nil {
		return nil, err
	}
	executor := sql.NewExecutor(buildVersion())
	executor.Catalog, executor.Names = lazy, lazy
	if c.catalog == "" {
		executor.DefaultCatalog = defaultCatalogServer(c.upstream)
	}
	executor.System, executor.Database = lazy.System.Name, lazy.System.Database
	install := &installer{log: log}
	sc := &sidecar{log: log, lazy: lazy, shutdownTimeout: c.shutdownTimeout, install: install,
		applier: &catalog.Applier{Upstream: c.upstream, System: lazy.System.Name, Catalog: lazy,
			Logger: log, Prepare: install.install},
		srv: &proxy.Server{Upstream: up, Executor: executor, StartupTimeout: c.startupTimeout, Logger: log}}
	logURL := c.eventLog
	if logURL == "" {
		logURL = lazy.URL
	}
	eventLog := &sharedLog{url: logURL}
	sc.eventLog = eventLog
	sc.capture = &capture.Runner{URL: c.upstream, System: lazy.System.Name, Logger: log,
		OpenLog: func(ctx context.Context) (eventlog.Writer, error) { return eventLog.open(ctx) }}
	sc.subscriber = &apply.Subscriber{URL: c.upstream, System: lazy.System.Name, Logger: log,
		OpenLog: func(ctx context.Context) (eventlog.Reader, error) { return eventLog.open(ctx) },
		Report:  lazy.ReportSubscriptions,
		Access: func(ctx context.Context, v eventlog.Version) (string, error) {
			return lazy.Access(ctx, v.Publication, v.Number)
		}}
	pace, err := headPace()
	if err != nil {
		return nil, err
	}
	sc.subscriber.HeadPace = pace
	if sc.subscriber.Batch, err = spanChanges(); err != nil {
		return nil, err
	}
	sc.applier.Applied = func(string) { sc.capture.Wake() }
	sc.lease = &lease.Lease{URL: c.upstream, System: lazy.System.Name, Logger: log}
	sc.capture.Exclusive = true
	lazy.Instance = catalog.NewInstance()
	lazy.Role = func() string {
		if sc.lease.Active() {
			return catalog.RoleActive
		}
		return catalog.RoleStandby
	}
	executor.CaptureProblem = sc.capture.Problem
	executor.ManagedProblem = install.Problem
	executor.Waiting, executor.Hurry, executor.StartWait = sc.waiting, lazy.Hurry, c.callWait
	executor.GuardsDDL = install.Installed
	lazy.Problem = func() string {
		if p := install.Problem(); p != "" {
			return p
		}
		if p := sc.capture.Problem(); p != "" {
			return p
		}
		return sc.capture.VersionProblems()
	}
	lazy.Failures = func() []catalog.VersionFailure {
		failed := sc.capture.FailedVersions()
		if failed == nil {
			return nil // not known yet: the catalog keeps what it has
		}
		out := []catalog.VersionFailure{}
		for _, f := range failed {
			out = append(out, catalog.VersionFailure{Publication: f.Version.Publication, Version: f.Version.Number, Problem: f.Problem})
		}
		return out
	}
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("cannot load TLS certificate: %w", err)
		}
		sc.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return sc, nil
}

// waiting says what keeps the sidecar from serving a call that needs
// need ("" when nothing): every call but rejot.version() waits for the
// first attempt to reach the catalog to end; one that needs the catalog
// finds it answering.
func (sc *sidecar) waiting(ctx context.Context, need sql.Need) string {
	if need.Managed {
		if what := sc.install.waiting(); what != "" {
			return what
		}
	}
	if need == (sql.Need{}) {
		return ""
	}
	if !sc.lazy.Tried() {
		return "the sidecar is starting: it is connecting to the catalog"
	}
	if need.Catalog && !sc.lazy.Ready() {
		if why := sc.lazy.LastError(); why != "" {
			return "the sidecar cannot reach the catalog: " + why
		}
		return "the sidecar is reconnecting to the catalog"
	}
	if need.Catalog {
		// The catalog may have gone since the last heartbeat.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := sc.lazy.Check(ctx); err != nil {
			return "the sidecar cannot reach the catalog: " + err.Error()
		}
	}
	return ""
}

// run serves clients on ln, keeps the catalog and the outbox applier
// going, and stops them all when ctx ends.
func (sc *sidecar) run(ctx context.Context, ln net.Listener) error {
	sc.log.Info().Str("listen", ln.Addr().String()).Str("version", buildVersion()).Msg("sidecar started")
	sc.lazy.System.Address = ln.Addr().String()
	bg, stop := context.WithCancel(context.Background())
	// A catalog that refuses the system (its name is another catalog
	// role's) ends the sidecar: it must not serve under a name not its own.
	refused := make(chan error, 1)
	sc.lazy.Refused = func(err error) {
		select {
		case refused <- err:
		default:
		}
	}
	var wg sync.WaitGroup
	wg.Add(5)
	// The event log is made at start, not at the first publish or
	// subscribe: the guide has other sidecars' roles granted on it once
	// the first sidecar has started.
	go func() { defer wg.Done(); retry.Open(bg, sc.log, "event log unreachable", sc.eventLog.open) }()
	go func() { defer wg.Done(); sc.lazy.Run(bg) }()
	go func() { defer wg.Done(); sc.applier.Run(bg) }()
	go func() { defer wg.Done(); sc.lease.Run(bg, sc.runActive) }()
	go func() {
		defer wg.Done()
		// A standby answers rejot.publish as the active instance would.
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		if err := sc.capture.CheckSetup(ctx); err != nil && bg.Err() == nil {
			sc.log.Warn().Err(err).Msg("cannot check whether the database can be captured; the active instance checks")
		}
	}()
	defer func() { stop(); wg.Wait() }()
	errc := make(chan error, 2)
	var serving sync.WaitGroup
	defer serving.Wait() // last: once both servers are shut down
	serving.Go(func() { errc <- sc.srv.Serve(ln) })
	if sc.http != nil {
		serving.Go(func() {
			if err := sc.http.Serve(sc.httpLn); err != nil {
				errc <- fmt.Errorf("http: %w", err)
			}
		})
		defer sc.http.Shutdown(context.Background())
	}
	select {
	case err := <-refused:
		sc.srv.Close(context.WithoutCancel(ctx))
		var pe *pgerr.Error
		if errors.As(err, &pe) && pe.Hint != "" {
			return fmt.Errorf("%s. %s", pe.Message, pe.Hint)
		}
		return err
	case err := <-errc:
		// One server failed: the other stops too (Close also ends the
		// relay's Serve when it is the HTTP side that failed).
		sc.srv.Close(context.WithoutCancel(ctx))
		return err
	case <-ctx.Done():
	}
	sc.log.Info().Dur("timeout", sc.shutdownTimeout).Msg("shutting down: no new clients; open transactions may finish")
	closeCtx, cancel := context.WithTimeout(context.Background(), sc.shutdownTimeout)
	defer cancel()
	err := sc.srv.Shutdown(closeCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = nil // the sessions left were closed
	}
	// Capture and apply stop at a clean point: what they are appending or
	// applying completes, positions are confirmed.
	stop()
	wg.Wait()
	sc.log.Info().Msg("shutdown complete")
	return err
}

// runActive runs the capture and the applies while this instance holds
// the lease: until ctx ends, which it does as soon as the lease is lost.
func (sc *sidecar) runActive(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { sc.capture.Run(ctx) })
	wg.Go(func() { sc.subscriber.Run(ctx) })
	wg.Wait()
}

// catalogFor wires the catalog: --catalog, or the database rejot on the
// upstream's server, created if missing.
func catalogFor(c *serveConfig, log zerolog.Logger) (*catalog.Lazy, error) {
	cfg, err := pgconn.ParseConfig(c.upstream)
	if err != nil {
		return nil, fmt.Errorf("invalid --upstream: %w", err)
	}
	name := c.name
	if name == "" {
		name = cfg.Database
	}
	lazy := &catalog.Lazy{URL: c.catalog, Logger: log,
		System: catalog.System{Name: name, Database: cfg.Database, Version: buildVersion()}}
	if lazy.URL == "" {
		if lazy.URL, err = catalog.DefaultURL(c.upstream); err != nil {
			return nil, err
		}
		lazy.CreateFrom = c.upstream
	}
	return lazy, nil
}

// defaultCatalogServer names the server of the default catalog: the
// upstream's host and port.
func defaultCatalogServer(upstream string) string {
	cfg, err := pgconn.ParseConfig(upstream)
	if err != nil {
		return "the upstream's server"
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// headPace is REJOT_HEAD_PACE, the least time between two reads of the
// log by a subscription at its head (a Go duration; "0" or a negative
// one: none), or the subscriber's default when unset. A tuning aid, for
// measuring what pacing costs and saves (docs/deploy.md).
func headPace() (time.Duration, error) {
	v := os.Getenv("REJOT_HEAD_PACE")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("REJOT_HEAD_PACE=%q: %w", v, err)
	}
	if d <= 0 {
		return -1, nil
	}
	return d, nil
}

// spanChanges is REJOT_SPAN_CHANGES, the most changes one target
// transaction applies (0, the subscriber's default, when unset). A tuning
// aid like REJOT_HEAD_PACE (docs/deploy.md).
func spanChanges() (int, error) {
	v := os.Getenv("REJOT_SPAN_CHANGES")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("REJOT_SPAN_CHANGES=%q: want a number of changes, at least 1", v)
	}
	return n, nil
}

// startCPUProfile writes a CPU profile until stop is called: a debugging
// aid for measuring the relay (REJOT_CPUPROFILE=file).
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// sharedLog opens the event log once for the capture and the subscriber:
// in JetStream for a nats:// or tls:// URL, else in Postgres.
type sharedLog struct {
	url string
	mu  sync.Mutex
	log eventlog.Log
}

func (s *sharedLog) open(ctx context.Context) (eventlog.Log, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		return s.log, nil
	}
	l, err := openLog(ctx, s.url)
	if err != nil {
		return nil, err
	}
	s.log = l
	return l, nil
}

func openLog(ctx context.Context, url string) (eventlog.Log, error) {
	if strings.HasPrefix(url, "nats://") || strings.HasPrefix(url, "tls://") {
		return natslog.Open(ctx, url)
	}
	return pglog.Open(ctx, url)
}
