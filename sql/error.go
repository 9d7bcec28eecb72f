package sql

import "fmt"

// SQLSTATE codes used by the API.
const (
	CodeSyntaxError           = "42601"
	CodeUndefinedFunction     = "42883"
	CodeFeatureNotSupported   = "0A000"
	CodeInFailedTransaction   = "25P02"
	CodeInvalidParameter      = "22023"
	CodeInvalidText           = "22P02"
	CodeProtocolViolation     = "08P01"
	CodeInternalError         = "XX000"
	CodeIndeterminateDatatype = "42P18"
	CodeUndefinedParameter    = "42P02"
	CodeUndefinedTable        = "42P01"
	CodeDuplicateObject       = "42710"
)

// Error is a Postgres error raised by the API: the proxy sends it to the
// client as an ErrorResponse.
type Error struct {
	Code    string // SQLSTATE
	Message string
	Detail  string
	Hint    string
	// Position is the 1-based byte offset of the error in the statement
	// text the client sent (the whole query string); 0 when there is none.
	Position int
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

// Errorf makes an Error with the given SQLSTATE.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// at sets the error's position from a 0-based byte location; negative
// locations (unknown in Postgres's parse tree) leave it unset.
func (e *Error) at(location int32) *Error {
	if location >= 0 {
		e.Position = int(location) + 1
	}
	return e
}

func (e *Error) hint(format string, args ...any) *Error {
	e.Hint = fmt.Sprintf(format, args...)
	return e
}
