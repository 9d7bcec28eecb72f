package sql

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

func subscribeFunction() *Function {
	return &Function{
		Name: "subscribe",
		Params: []Param{{Name: "publication", Type: OIDText}, {Name: "version", Type: OIDInt4},
			{Name: "target", Type: OIDText}, {Name: "columns", Type: OIDText, Optional: true},
			{Name: "copy", Type: OIDBool, Optional: true, Default: "true"},
			// a mapped subscription (mapped.go)
			{Name: "upsert", Type: OIDText, Optional: true}, {Name: "delete", Type: OIDText, Optional: true},
			{Name: "truncate", Type: OIDText, Optional: true}},
		Returns: subscriptionColumns,
		Run:     runSubscribe,
		Records: true,
		// the version's columns and who may subscribe
		ReadsCatalog: true,
	}
}

func unsubscribeFunction() *Function {
	return &Function{
		Name:    "unsubscribe",
		Params:  []Param{{Name: "target", Type: OIDText}, {Name: "drop_table", Type: OIDBool, Optional: true, Default: "false"}},
		Returns: subscriptionColumns,
		Run:     runUnsubscribe,
		Records: true,
	}
}

func resyncFunction() *Function {
	return &Function{
		Name:    "resync",
		Params:  []Param{{Name: "target", Type: OIDText}},
		Returns: subscriptionColumns,
		Run:     runResync,
		Records: true,
	}
}

var subscriptionColumns = []Column{{Name: "target", TypeOID: OIDText}, {Name: "publication", TypeOID: OIDText},
	{Name: "version", TypeOID: OIDInt4}, {Name: "status", TypeOID: OIDText}}

type publicColumn struct {
	name, typ     string
	key, nullable bool
}

func runSubscribe(ctx context.Context, env *Env, args Args) ([][]any, error) {
	pub := args.Text("publication")
	n, ok, err := args.Int("version")
	if err != nil {
		return nil, err
	}
	if !ok || n < 1 || n > 1<<30 {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "invalid version %s: versions are whole numbers from 1", nullText(args["version"]))
	}
	version := int(n)
	copyRows := true
	if args["copy"] != nil {
		if copyRows, err = args.Bool("copy"); err != nil {
			return nil, err
		}
	}
	if isMapped(args) {
		return runMappedSubscribe(ctx, env, args, pub, version, copyRows)
	}
	target, err := resolveTarget(ctx, env.Session, args["target"])
	if err != nil {
		return nil, err
	}
	if err := target.mustOwn("subscribe into it"); err != nil {
		return nil, err
	}
	cols, err := env.versionColumns(ctx, pub, version)
	if err != nil {
		return nil, err
	}
	if err := env.checkAccess(ctx, pub, version); err != nil {
		return nil, err
	}
	chosen, err := chooseColumns(cols, args["columns"], pub, version)
	if err != nil {
		return nil, err
	}
	// Serialise subscribe, unsubscribe and resync of one target.
	if _, err := env.Session.Query(ctx, managed.LockTarget, &target.schema, &target.table); err != nil {
		return nil, notManaged(err)
	}
	existing, err := existingSubscription(ctx, env.Session, target.name)
	if err != nil {
		return nil, err
	}
	if existing != nil {
		if mapped, err := isMappedSubscription(ctx, env.Session, target.name); err != nil || mapped {
			if err != nil {
				return nil, err
			}
			return nil, pgerr.Errorf(pgerr.DuplicateObject, "table %s has a mapped subscription to %s version %d", target.name, existing.Publication, existing.Version).
				WithHint("Unsubscribe it first (CALL rejot.unsubscribe('%s')), or subscribe into another table.", target.name)
		}
		if existing.Publication == pub && existing.Version == version {
			// already so: a no-op, or the columns of a newer minor added
			return addColumns(ctx, env.Session, target, existing, chosen)
		}
		return nil, pgerr.Errorf(pgerr.DuplicateObject, "table %s is already subscribed to %s version %d", target.name, existing.Publication, existing.Version).
			WithHint("Unsubscribe it first (CALL rejot.unsubscribe('%s')), or subscribe into another table.", target.name)
	}
	if target.exists {
		if err := checkTarget(ctx, env.Session, target, chosen, cols, pub, version); err != nil {
			return nil, err
		}
	} else if err := createTarget(ctx, env.Session, target, chosen, cols); err != nil {
		return nil, err
	}
	recorded, err := json.Marshal(chosen)
	if err != nil {
		return nil, err
	}
	// The subscription and its command, in one call of _rejot.
	rec, copyText, v := string(recorded), strconv.FormatBool(copyRows), strconv.Itoa(version)
	_, err = env.Session.Query(ctx, managed.InsertSubscription, &target.name, &target.schema, &target.table, &pub, &v, &rec, &copyText)
	if err != nil {
		return nil, notManaged(err)
	}
	return [][]any{{target.name, pub, int32(version), "copying"}}, nil
}

func runUnsubscribe(ctx context.Context, env *Env, args Args) ([][]any, error) {
	drop, err := args.Bool("drop_table")
	if err != nil {
		return nil, err
	}
	sub, target, err := ownSubscription(ctx, env, args)
	if err != nil {
		return nil, err
	}
	if drop {
		// a mapped subscription's table is the consumer's own
		if mapped, err := isMappedSubscription(ctx, env.Session, target); err != nil || mapped {
			if err != nil {
				return nil, err
			}
			return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "table %s belongs to you, not to its mapped subscription: unsubscribe keeps it", target).
				WithHint("Unsubscribe without drop_table, then drop the table yourself if you mean to.")
		}
	}
	if _, err := env.Session.Query(ctx, managed.DeleteSubscription, &target); err != nil { // and its command
		return nil, notManaged(err)
	}
	if drop {
		if err := dropTarget(ctx, env.Session, args["target"]); err != nil {
			return nil, err
		}
	}
	return [][]any{{target, sub.Publication, int32(sub.Version), "stopped"}}, nil
}

func runResync(ctx context.Context, env *Env, args Args) ([][]any, error) {
	sub, target, err := ownSubscription(ctx, env, args)
	if err != nil {
		return nil, err
	}
	if err := env.checkAccess(ctx, sub.Publication, sub.Version); err != nil {
		return nil, err
	}
	_, err = env.Session.Query(ctx, managed.ResyncSubscription, &target) // and its command
	if err != nil {
		return nil, notManaged(err)
	}
	return [][]any{{target, sub.Publication, int32(sub.Version), "copying"}}, nil
}

// ownSubscription finds and locks the subscription a target argument
// names.
func ownSubscription(ctx context.Context, env *Env, args Args) (*managed.SubscriptionCommand, string, error) {
	target, err := resolveTarget(ctx, env.Session, args["target"])
	if err != nil {
		return nil, "", err
	}
	if err := target.mustOwn("change its subscription"); err != nil {
		return nil, "", err
	}
	if _, err := env.Session.Query(ctx, managed.LockTarget, &target.schema, &target.table); err != nil {
		return nil, "", notManaged(err)
	}
	sub, err := existingSubscription(ctx, env.Session, target.name)
	if err != nil {
		return nil, "", err
	}
	if sub == nil {
		return nil, "", pgerr.Errorf(pgerr.UndefinedObject, "table %s is not subscribed to anything", target.name).
			WithHint("SELECT target, publication, version FROM rejot.subscriptions shows the subscriptions.")
	}
	return &sub.SubscriptionCommand, target.name, nil
}

type existing struct {
	managed.SubscriptionCommand
	status string
}

func existingSubscription(ctx context.Context, sess Session, target string) (*existing, error) {
	rows, err := sess.Query(ctx, managed.LockSubscriptionRecord, &target)
	if err != nil {
		return nil, notManaged(err)
	}
	if len(rows.Values) == 0 {
		return nil, nil
	}
	r := rows.Values[0]
	v, _ := strconv.Atoi(*r[1])
	return &existing{managed.SubscriptionCommand{Target: target, Publication: *r[0], Version: v}, *r[2]}, nil
}

// target is a subscription's table, resolved in the caller's session.
type target struct {
	schema, table string
	name          string // schema.table, quoted where needed
	exists        bool
	// owned: the caller is a member of owner, the role that owns the
	// table (when it exists); caller is the caller's role.
	owned         bool
	owner, caller string
}

// mustOwn refuses a caller that does not own (by membership) an existing
// target: subscribing into it, unsubscribing or resyncing it. _rejot's
// functions check it again.
func (t *target) mustOwn(action string) error {
	if !t.exists || t.owned {
		return nil
	}
	return notOwner(t.owner, t.name, action, t.caller)
}

func resolveTarget(ctx context.Context, sess Session, arg *string) (*target, error) {
	if arg == nil || strings.TrimSpace(*arg) == "" {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "the target must name a table, as schema.table or table")
	}
	rows, err := sess.Query(ctx, `SELECT CASE WHEN cardinality(p) = 1 THEN current_schema() ELSE p[1] END, p[cardinality(p)], cardinality(p)::text
		FROM parse_ident($1) AS p`, arg)
	if err != nil {
		return nil, targetError(err, *arg)
	}
	r := rows.Values[0]
	if *r[2] != "1" && *r[2] != "2" {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "invalid target %q: name a table as schema.table or table", *arg)
	}
	if r[0] == nil {
		return nil, pgerr.Errorf(pgerr.InvalidSchemaName, "no schema has been selected to create the target %s in", *arg).
			WithHint("Name the target as schema.table.")
	}
	t := &target{schema: *r[0], table: *r[1]}
	if len(t.schema) > maxName || len(t.table) > maxName {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "invalid target %q: a name has at most %d bytes", *arg, maxName)
	}
	rows, err = sess.Query(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)::text,
		(SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  WHERE n.nspname = $1 AND c.relname = $2), format('%I.%I', $1, $2),
		(SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')::text || ' ' || pg_catalog.pg_get_userbyid(c.relowner)
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		  WHERE n.nspname = $1 AND c.relname = $2), current_user::text`, &t.schema, &t.table)
	if err != nil {
		return nil, err
	}
	if *rows.Values[0][0] != "true" {
		return nil, pgerr.Errorf(pgerr.InvalidSchemaName, "schema %q does not exist", t.schema).WithHint("Create it first: CREATE SCHEMA %s;", pgx.Identifier{t.schema}.Sanitize())
	}
	t.name = *rows.Values[0][2] // quoted where needed, as Postgres prints names
	if kind := rows.Values[0][1]; kind != nil {
		if *kind != "r" && *kind != "p" {
			return nil, pgerr.Errorf(pgerr.WrongObjectType, "%s is not a table", t.name)
		}
		t.exists = true
		if owner := rows.Values[0][3]; owner != nil {
			owned, name, _ := strings.Cut(*owner, " ")
			t.owned, t.owner = owned == "true", name
		}
	}
	t.caller = *rows.Values[0][4]
	return t, nil
}

// maxName is the longest name Postgres keeps (NAMEDATALEN - 1 bytes).
const maxName = 63

// dropTarget drops the table a target argument names, by the names the
// catalog has for it, if it is there.
func dropTarget(ctx context.Context, sess Session, arg *string) error {
	t, err := resolveTarget(ctx, sess, arg)
	if err != nil || !t.exists {
		return err
	}
	_, err = sess.Query(ctx, "DROP TABLE "+pgx.Identifier{t.schema, t.table}.Sanitize())
	return err
}

// notFoundHint is the hint of a subscribe to a version the catalog does
// not have; a sidecar on its default catalog may be looking in the wrong
// one.
func notFoundHint(defaultCatalog string) string {
	hint := "SELECT publication, version, status FROM rejot.publications lists what can be subscribed to."
	if defaultCatalog == "" {
		return hint
	}
	return hint + " This sidecar was given no --catalog, so its catalog is the database rejot on its upstream's server (" +
		defaultCatalog + "): a publication of a sidecar on another server may be in another catalog. " +
		"Point --catalog of every sidecar at one shared catalog."
}

func targetError(err error, arg string) error {
	if qe, ok := err.(*pgerr.Error); ok && strings.HasPrefix(qe.Code, pgerr.ClassDataException) {
		return pgerr.Errorf(pgerr.InvalidParameterValue, "invalid target %q: %s", arg, qe.Message)
	}
	return err
}

// versionColumns reads a publication version's columns from the catalog.
func (env *Env) versionColumns(ctx context.Context, pub string, version int) ([]publicColumn, error) {
	x := env.Executor
	if x.Catalog == nil {
		return nil, errNoCatalog
	}
	status, vcols, found, err := x.Catalog.VersionColumns(ctx, pub, version)
	if err != nil {
		return nil, pgerr.Errorf(pgerr.ConnectionFailure, "cannot read publication %s version %d: the catalog is not reachable", pub, version).
			WithHint("Subscribing needs the catalog; retry when it is back.")
	}
	if !found {
		return nil, pgerr.Errorf(pgerr.UndefinedObject, "publication %s version %d does not exist", pub, version).
			WithHint("%s", notFoundHint(x.DefaultCatalog))
	}
	if status == StatusRetired {
		return nil, pgerr.Errorf(pgerr.ObjectNotInPrerequisiteState, "publication %s version %d is retired", pub, version).
			WithHint("Subscribe to a version that is active (see rejot.publications).")
	}
	cols := make([]publicColumn, len(vcols))
	for i, c := range vcols {
		cols[i] = publicColumn{name: c.Name, typ: c.Type, key: c.IsKey, nullable: c.Nullable}
	}
	return cols, nil
}

// chooseColumns picks the subscribed columns: all, or those listed (which
// must include the key).
func chooseColumns(cols []publicColumn, list *string, pub string, version int) ([]managed.SubscribedColumn, error) {
	var names []string
	if list != nil {
		names = parseNameList(*list)
		if len(names) == 0 {
			return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "columns lists no column").WithHint("Leave it out to subscribe to every column.")
		}
	}
	want := map[string]bool{}
	for _, n := range names {
		found := false
		for _, c := range cols {
			found = found || c.name == n
		}
		if !found {
			return nil, pgerr.Errorf(pgerr.UndefinedColumn, "publication %s version %d has no column %q", pub, version, n)
		}
		want[n] = true
	}
	var chosen []managed.SubscribedColumn
	for i, c := range cols {
		if names != nil && !want[c.name] {
			if c.key {
				return nil, pgerr.Errorf(pgerr.InvalidColumnReference, "the subscribed columns must include the key column %q", c.name)
			}
			continue
		}
		chosen = append(chosen, managed.SubscribedColumn{Name: c.name, Type: c.typ, Key: c.key, Index: i})
	}
	return chosen, nil
}

// parseNameList reads '{a,"b c"}' (an array literal, as ARRAY['a', 'b c']
// arrives) or 'a, b'.
func parseNameList(s string) []string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
		s = s[1 : len(s)-1]
	}
	var names []string
	var cur strings.Builder
	quoted, inQuotes := false, false
	end := func() {
		name := cur.String()
		if !quoted {
			name = strings.TrimSpace(name)
		}
		if name != "" {
			names = append(names, name)
		}
		cur.Reset()
		quoted = false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuotes && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case inQuotes && c == '"':
			inQuotes = false
		case inQuotes:
			cur.WriteByte(c)
		case c == '"':
			inQuotes, quoted = true, true
			cur.Reset()
		case c == ',':
			end()
		default:
			if !quoted {
				cur.WriteByte(c)
			}
		}
	}
	end()
	return names
}

// createTarget creates the target table: the public columns with their
// exact types, NOT NULL where the publication promises it, the public key
// as primary key.
func createTarget(ctx context.Context, sess Session, t *target, chosen []managed.SubscribedColumn, cols []publicColumn) error {
	var defs, keys []string
	if err := checkTypes(ctx, sess, chosen); err != nil {
		return err
	}
	for _, c := range chosen {
		def := pgx.Identifier{c.Name}.Sanitize() + " " + c.Type
		if !cols[c.Index].nullable {
			def += " NOT NULL"
		}
		defs = append(defs, def)
		if c.Key {
			keys = append(keys, pgx.Identifier{c.Name}.Sanitize())
		}
	}
	defs = append(defs, "PRIMARY KEY ("+strings.Join(keys, ", ")+")")
	_, err := sess.Query(ctx, "CREATE TABLE "+pgx.Identifier{t.schema, t.table}.Sanitize()+" ("+strings.Join(defs, ", ")+")")
	return err
}

// checkTarget makes sure an existing table can hold the subscription,
// naming every mismatch.
func checkTarget(ctx context.Context, sess Session, t *target, chosen []managed.SubscribedColumn, cols []publicColumn, pub string, version int) error {
	rows, err := sess.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
			a.attnotnull::text, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '')::text,
			coalesce(a.attnum = ANY (i.indkey::int2[]), false)::text
		FROM pg_catalog.pg_attribute a
		LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, &t.schema, &t.table)
	if err != nil {
		return err
	}
	type col struct {
		typ                   string
		notNull, filled, isPK bool
	}
	have := map[string]col{}
	var order []string
	for _, r := range rows.Values {
		have[*r[0]] = col{typ: *r[1], notNull: *r[2] == "true", filled: *r[3] == "true", isPK: *r[4] == "true"}
		order = append(order, *r[0])
	}
	var problems []string
	subscribed := map[string]bool{}
	var wantKey, haveKey []string
	for _, c := range chosen {
		subscribed[c.Name] = true
		if c.Key {
			wantKey = append(wantKey, c.Name)
		}
		h, ok := have[c.Name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("column %s is missing", c.Name))
		case h.typ != c.Type:
			problems = append(problems, fmt.Sprintf("column %s is %s, the publication's is %s", c.Name, h.typ, c.Type))
		}
	}
	for _, name := range order {
		h := have[name]
		if h.isPK {
			haveKey = append(haveKey, name)
		}
		if !subscribed[name] && h.notNull && !h.filled {
			problems = append(problems, fmt.Sprintf("column %s is NOT NULL without a default, and the publication does not fill it", name))
		}
	}
	if !sameSet(wantKey, haveKey) {
		if len(haveKey) == 0 {
			problems = append(problems, fmt.Sprintf("the table has no primary key; the publication's key is (%s)", strings.Join(wantKey, ", ")))
		} else {
			problems = append(problems, fmt.Sprintf("the primary key is (%s), the publication's key is (%s)", strings.Join(haveKey, ", "), strings.Join(wantKey, ", ")))
		}
	}
	if len(problems) > 0 {
		return pgerr.Errorf(pgerr.InvalidTableDefinition, "table %s does not fit publication %s version %d: %s", t.name, pub, version, strings.Join(problems, "; ")).
			WithHint("Change the table to match, or subscribe into a table that does not exist yet: ReJot creates it.")
	}
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[string]bool{}
	for _, x := range a {
		in[x] = true
	}
	for _, x := range b {
		if !in[x] {
			return false
		}
	}
	return true
}
