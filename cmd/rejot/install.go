package main

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rs/zerolog"
)

// installer installs _rejot as the outbox applier connects, and keeps
// why it could not when the schema is not the sidecar's: that problem is
// logged once, shown with the system in the catalog, and refuses rejot
// calls until an administrator has dealt with the schema. Until the
// first install has succeeded, calls that record intent wait.
type installer struct {
	log     zerolog.Logger
	problem atomic.Pointer[string]
	// installed is set once _rejot is installed and the sidecar's.
	installed atomic.Bool
	lastErr   atomic.Pointer[string]
	// apiProblem is why schema rejot was last left as it is ("" when
	// it is the sidecar's).
	apiProblem atomic.Pointer[string]
}

func (in *installer) install(ctx context.Context, conn *pgx.Conn) error {
	err := managed.Install(ctx, conn)
	var foreign *managed.ForeignError
	problem := ""
	if errors.As(err, &foreign) {
		problem = foreign.Error()
	}
	if old := in.Problem(); problem != old && problem != "" {
		in.log.Error().Str("problem", problem).Msg("schema _rejot is not the sidecar's: not managing this database")
	}
	in.problem.Store(&problem)
	if err != nil {
		msg := err.Error()
		in.lastErr.Store(&msg)
	}
	in.installed.Store(err == nil)
	if err == nil {
		in.installAPI(ctx, conn)
	}
	return err
}

// installAPI makes schema rejot's signposts (psql's view of the API). It
// never keeps the sidecar from managing the database: calls are answered
// by the sidecar whatever that schema holds. What keeps it from making
// them is logged once.
func (in *installer) installAPI(ctx context.Context, conn *pgx.Conn) {
	err := managed.InstallAPI(ctx, conn)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if old := in.apiProblem.Swap(&msg); (old == nil || *old != msg) && msg != "" {
		in.log.Warn().Str("problem", msg).Msg("schema " + managed.APISchema + " is not installed: psql does not show the API in this database")
	}
}

// Installed says whether _rejot is installed and the sidecar's, as last
// checked.
func (in *installer) Installed() bool { return in.installed.Load() }

// Problem says why _rejot cannot be used ("" when it can).
func (in *installer) Problem() string {
	if p := in.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// waiting says what a call that records intent waits for ("" when
// nothing: _rejot is installed, or it is not the sidecar's and the call
// is refused at once).
func (in *installer) waiting() string {
	if in.installed.Load() || in.Problem() != "" {
		return ""
	}
	what := "the sidecar is starting: it is installing its schema " + managed.Schema + " in the database"
	if p := in.lastErr.Load(); p != nil {
		what += " (last attempt: " + *p + ")"
	}
	return what
}
