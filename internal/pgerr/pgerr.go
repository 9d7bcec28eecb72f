// Package pgerr is the sidecar's one Postgres error: what the rejot API
// raises and the proxy writes to the client as an ErrorResponse, and what a
// server answers to a query the sidecar runs on a client's behalf. It also
// names the SQLSTATEs the sidecar raises or matches, so that no code is a
// bare string.
package pgerr

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// Error is a Postgres error with a SQLSTATE.
type Error struct {
	Code    string // SQLSTATE
	Message string
	Detail  string
	Hint    string
	// Position is the 1-based byte offset of the error in the statement
	// text the client sent (the whole query string); 0 when there is none.
	Position int
	// InternalPosition is the 1-based character position the server
	// reported in a query the sidecar ran for the client; 0 when none. It is
	// kept apart from Position because the client never saw that query: the
	// proxy does not send it, and a caller that knows where the query came
	// from may turn it into a Position.
	InternalPosition int
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

// Errorf makes an Error with the given SQLSTATE. It returns the concrete
// type so that At and WithHint can be chained; it is never nil.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// At sets the error's position from a 0-based byte location, as Postgres's
// parse tree gives it; negative locations (unknown in the parse tree) leave
// it unset.
func (e *Error) At(location int32) *Error {
	if location >= 0 {
		e.Position = int(location) + 1
	}
	return e
}

// WithHint sets the error's hint.
func (e *Error) WithHint(format string, args ...any) *Error {
	e.Hint = fmt.Sprintf(format, args...)
	return e
}

// FromPgError turns a server's error for a query the sidecar ran into an
// Error. The server's position is in that query, so it becomes the
// InternalPosition.
func FromPgError(pe *pgconn.PgError) *Error {
	return &Error{Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint,
		InternalPosition: int(pe.Position)}
}

// Is says whether err, or an error it wraps, is a Postgres error with the
// given SQLSTATE: one of the sidecar's own or one pgx returned from a server.
func Is(err error, code string) bool {
	var e *Error
	if errors.As(err, &e) && e.Code == code {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}
