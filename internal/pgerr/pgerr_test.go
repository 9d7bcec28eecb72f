package pgerr_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

func TestIs(t *testing.T) {
	own := pgerr.Errorf(pgerr.UndefinedTable, "relation %q does not exist", "t")
	server := &pgconn.PgError{Code: pgerr.UniqueViolation, Message: "duplicate key"}
	tests := []struct {
		name string
		err  error
		code string
		want bool
	}{
		{"own", own, pgerr.UndefinedTable, true},
		{"own, other code", own, pgerr.UniqueViolation, false},
		{"own, wrapped", fmt.Errorf("cannot read: %w", own), pgerr.UndefinedTable, true},
		{"server", server, pgerr.UniqueViolation, true},
		{"server, other code", server, pgerr.UndefinedTable, false},
		{"server, wrapped", fmt.Errorf("cannot insert: %w", server), pgerr.UniqueViolation, true},
		{"both joined", errors.Join(own, server), pgerr.UniqueViolation, true},
		{"plain", errors.New("42P01"), pgerr.UndefinedTable, false},
		{"nil", nil, pgerr.UndefinedTable, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pgerr.Is(tt.err, tt.code); got != tt.want {
				t.Errorf("Is(%v, %s) = %v, want %v", tt.err, tt.code, got, tt.want)
			}
		})
	}
}

func TestError(t *testing.T) {
	e := pgerr.Errorf(pgerr.SyntaxError, "syntax error at or near %q", "FORM").At(9).WithHint("Did you mean %s?", "FROM")
	if got, want := e.Error(), `syntax error at or near "FORM" (SQLSTATE 42601)`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if e.Position != 10 || e.Hint != "Did you mean FROM?" {
		t.Errorf("position %d, hint %q", e.Position, e.Hint)
	}
	if e.At(-1).Position != 10 {
		t.Errorf("an unknown location moved the position to %d", e.Position)
	}
}

func TestFromPgError(t *testing.T) {
	pe := &pgconn.PgError{Code: pgerr.UndefinedColumn, Message: "column x does not exist", Detail: "d", Hint: "h", Position: 8}
	got := pgerr.FromPgError(pe)
	want := pgerr.Error{Code: pe.Code, Message: pe.Message, Detail: "d", Hint: "h", InternalPosition: 8}
	if *got != want {
		t.Errorf("got %+v, want %+v", *got, want)
	}
	if got.Error() != "column x does not exist (SQLSTATE 42703)" {
		t.Errorf("Error() = %q", got.Error())
	}
}
