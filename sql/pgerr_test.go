package sql

import (
	"errors"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// pgErrorOf is err's Postgres error, for the tests that look at its fields:
// nil for nil, and for an error that is not one an Error without a SQLSTATE,
// which no test accepts.
func pgErrorOf(err error) *pgerr.Error {
	var e *pgerr.Error
	if err == nil || errors.As(err, &e) {
		return e
	}
	return &pgerr.Error{Message: err.Error()}
}
