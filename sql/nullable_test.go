package sql

import (
	"context"
	"testing"
)

const peopleSchema = `
CREATE TABLE people (
	id int PRIMARY KEY,
	first text NOT NULL,
	last text NOT NULL,
	customer varchar(200) NOT NULL,
	n int,
	s text,
	flag boolean,
	tags int[] NOT NULL
);
CREATE TYPE mood AS ENUM ('ok', 'bad');
-- A cast that turns a value into NULL, and an operator that does.
CREATE FUNCTION int_mood(int) RETURNS mood IMMUTABLE LANGUAGE sql AS 'SELECT NULL::public.mood';
CREATE CAST (int AS mood) WITH FUNCTION int_mood(int);
CREATE FUNCTION no_text(text, text) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT NULL::text';
CREATE OPERATOR public.+ (FUNCTION = no_text, LEFTARG = text, RIGHTARG = text);
CREATE DOMAIN moods AS mood[];
CREATE TYPE size AS ENUM ('s', 'm');
`

// TestNullability: the rules of sql/nullable.go, each with the cases that
// must stay nullable because Postgres could return NULL for them.
func TestNullability(t *testing.T) {
	tests := []struct {
		expr, where string
		nullable    bool
	}{
		{"first", "", false},
		{"n", "", true},
		{"customer::text", "", false},
		{"cast(customer AS varchar(10))", "", false},
		{"id::bigint::numeric(20,2)", "", false},
		{"n::text", "", true},
		{"first || ' ' || last", "", false},
		{"first || ' ' || s", "", true},
		{"first + last", "", true}, // public.+ : a user's operator
		{"coalesce(n, 0)", "", false},
		{"coalesce(n, id)", "", false},
		{"coalesce(n, s::int)", "", true},
		{"'x'", "", false},
		{"42", "", false},
		{"'draft'::text", "", false},
		{"NULL::text", "", true},
		{"CASE WHEN n > 0 THEN 'a' ELSE 'b' END", "", false},
		{"CASE WHEN n > 0 THEN 'a' END", "", true},
		{"CASE WHEN n > 0 THEN 'a' ELSE s END", "", true},
		{"CASE n WHEN 1 THEN first ELSE last END", "", false},
		{"n IS NULL", "", false},
		{"flag IS TRUE", "", false},
		{"id > 5 AND first <> ''", "", false},
		{"id > 5 AND flag", "", true},
		{"id + 1", "", false},
		{"n + 1", "", true},
		{"-id", "", false},
		{"upper(first)", "", true}, // functions decide nothing
		{"nullif(first, 'x')", "", true},
		{"id::mood", "", true},   // cast by a function of the user's
		{"'ok'::mood", "", true}, // a user's function casts to mood
		{"'s'::size", "", false}, // through size's text form
		{"ARRAY['s']::size[]", "", false},
		{"ARRAY[id]::moods", "", true},
		{"tags::text[]", "", false},
		{"first COLLATE \"C\"", "", false},
		{"n", "n IS NOT NULL", false},
		{"n::text", "n IS NOT NULL AND s <> 'x'", false},
		{"s", "n IS NOT NULL AND s <> 'x'", false},
		{"s", "p.s = 'x'", false},
		{"n", "n > 0", false},
		{"n", "n BETWEEN 1 AND 5", false},
		{"n", "n IN (1, 2)", false},
		{"flag", "flag", false},
		{"flag", "NOT flag", false},
		{"flag", "flag IS FALSE", false},
		{"n", "n IS NOT NULL OR s IS NOT NULL", true},
		{"n", "n IS DISTINCT FROM 0", true},
		{"n", "coalesce(n, 0) > 0", true},
		{"n", "flag IS NOT TRUE", true},
		{"s", "s + 'a' = 'b'", true},
		{"s", "n IS NULL", true},
	}
	for _, tt := range tests {
		name := tt.expr
		if tt.where != "" {
			name += " WHERE " + tt.where
		}
		t.Run(name, func(t *testing.T) {
			tx := setup(t)
			if _, err := tx.Exec(context.Background(), peopleSchema); err != nil {
				t.Fatal(err)
			}
			q := "SELECT id, " + tt.expr + " AS v FROM people p"
			if tt.where != "" {
				q += " WHERE " + tt.where
			}
			v, err := validateIn(t, tx, q)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.Columns[1].Nullable; got != tt.nullable {
				t.Fatalf("nullable = %v, want %v (stored %s)", got, tt.nullable, v.Stored)
			}
		})
	}
}
