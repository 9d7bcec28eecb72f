package tests

import (
	"strings"
	"testing"
	"time"
)

// TestSubscriptionTypeMatrix: every built-in type family — arrays, numeric
// with scale and NaN, ±infinity, bytea, json and jsonb, enums, domains,
// NULL next to ” — arrives in the target exactly, through the copy and
// through streamed changes.
func TestSubscriptionTypeMatrix(t *testing.T) {
	owner := newPublisher(t)
	consumer := newPublisher(t)
	name := owner.name("types")
	types := `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);`
	cols := "id, b, i2, i4, i8, n, n2, f4, f8, t, vc, c, by, d, tm, ttz, ts, tstz, iv, u, j, jb, arr, tarr, inet_, cidr_, mac, bits, rng, pt, m, dom, x, money_, oid_"
	for _, q := range []string{types, `CREATE TABLE types (id int PRIMARY KEY,
			b boolean, i2 smallint, i4 integer, i8 bigint, n numeric, n2 numeric(12,2), f4 real, f8 double precision,
			t text, vc varchar(10), c char(3), by bytea, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
			iv interval, u uuid, j json, jb jsonb, arr int[], tarr text[], inet_ inet, cidr_ cidr, mac macaddr,
			bits bit varying(8), rng int4range, pt point, m mood, dom posint, x xml, money_ money, oid_ oid)`,
		`INSERT INTO types (` + cols + `) VALUES (1, true, -32768, 2147483647, -9223372036854775808, 'NaN', 12.30, 'Infinity', -1.0000000000000002,
		  '', 'ünïcödé', 'ab', '\x00ff'::bytea, 'infinity', '24:00:00', '23:59:59.999999+14', '-infinity', '2024-02-29 12:00:00.000001+00',
		  '-1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b":1,  "a":[1.50]}', '{"b":1, "a":[1.50]}',
		  '{1,NULL,3}', '{"x,y","",NULL,"\""}', '::1', '10.0.0.0/8', '08:00:2b:01:02:03', B'1011', '[1,5)', '(1.5,-2)', 'happy', 7,
		  '<a>x</a>', '$1,234.56', 4294967295)`,
	} {
		if err := owner.exec(t, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, "SELECT "+cols+" FROM types"); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if err := consumer.exec(t, types); err != nil {
		t.Fatal(err)
	}
	// Let the first fill reach the log, so row 1 comes through the copy.
	logDB := pg.Connect(t, "rejot")
	waitFor(t, 30*time.Second, func() bool {
		return logHead(t, logDB, name) >= 2
	})
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'types')", name); err != nil {
		t.Fatal(err)
	}
	// Row 2 and the changes to row 1 come through the stream.
	for _, q := range []string{
		`INSERT INTO types (` + cols + `) VALUES (2, NULL, NULL, NULL, NULL, -0.000, NULL, '-Infinity', 'NaN', NULL, NULL, NULL, ''::bytea, NULL, NULL, NULL, NULL, NULL,
		  NULL, NULL, 'null', 'null', '{}', '{}', NULL, NULL, NULL, B'', 'empty', NULL, NULL, NULL, NULL, NULL, NULL)`,
		`INSERT INTO types (id, t, tarr, by, jb) VALUES (3, E'tab\there\nnew line \\ backslash', '{"a\"b"}', '\xdeadbeef', '{"k": [true, null, 1e100]}')`,
		"UPDATE types SET n = 123456789012345678901234567890.123456789, f8 = 1e-300, ts = 'infinity' WHERE id = 1",
	} {
		if err := owner.exec(t, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	texts := make([]string, 0)
	for _, c := range strings.Split(cols, ", ") {
		texts = append(texts, c+"::text")
	}
	query := "SELECT " + strings.Join(texts, ", ") + " FROM types"
	targetConverges(t, 30*time.Second, owner.conn, query, consumer.conn, "(SELECT "+strings.Join(texts, ", ")+" FROM public.types) AS x")
}
