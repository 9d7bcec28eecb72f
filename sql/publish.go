package sql

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// NameClaimer decides which system owns a publication name.
type NameClaimer interface {
	Claim(ctx context.Context, name, system string) (owner string, err error)
}

var publicationName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func publishFunction() *Function {
	return &Function{
		Name: "publish",
		Params: []Param{{Name: "name", Type: OIDText}, {Name: "version", Type: OIDInt4},
			{Name: "query", Type: OIDText}, {Name: "description", Type: OIDText, Optional: true}},
		Returns: []Column{{Name: "publication", TypeOID: OIDText}, {Name: "version", TypeOID: OIDInt4},
			{Name: "minor", TypeOID: OIDInt4}, {Name: "columns", TypeOID: OIDText}},
		Run:     runPublish,
		Records: true,
	}
}

func runPublish(ctx context.Context, env *Env, args Args) ([][]any, error) {
	name, version, query, err := publishArgs(args)
	if err != nil {
		return nil, err
	}
	if f := env.Executor.CaptureProblem; f != nil {
		if problem := f(); problem != "" {
			return nil, pgerr.Errorf(pgerr.ObjectNotInPrerequisiteState, "%s", problem).
				WithHint("Set wal_level = logical on the server (and restart it), and give the sidecar's role REPLICATION; the sidecar notices within seconds.")
		}
	}
	if IsJoin(query) {
		return runPublishJoin(ctx, env, args, name, version, query)
	}
	p, perr := AnalyzeProjection(query)
	if perr != nil {
		return nil, env.inArg("query", perr)
	}
	v, err := Validate(ctx, env.Session, p)
	if err != nil {
		var e *pgerr.Error
		if errors.As(err, &e) {
			return nil, env.inArg("query", e)
		}
		return nil, err
	}
	if err := checkPublisher(ctx, env.Session, v.TableOID, v.Source); err != nil {
		return nil, err
	}
	if err := env.checkOwner(ctx, name); err != nil {
		return nil, err
	}
	pub := &managed.Published{Publication: name, Version: version, Owner: env.Executor.System,
		Database: env.Executor.Database, Query: v.Stored, Source: v.Source, KeyColumns: v.Key,
		Columns: publicColumns(v), Description: args.Text("description")}
	filters := []string{p.Filter}
	if stored, err := AnalyzeProjection(v.Stored); err == nil {
		// as the record keeps it (Postgres's normalised form), and as given
		// (what a record of an older release keeps)
		filters = append([]string{stored.Filter}, p.Filter)
	}
	return publishRecord(ctx, env, pub, filters, p.References, nil)
}

// joinedReads is what a join version reads of one joined table.
type joinedReads struct {
	Table   string   `json:"table"`
	Columns []string `json:"columns"`
}

// publishRecord reconciles a validated version with its record, records
// it when something changed, and records what it reads of its root table
// (references) and of its joined tables (joined; none for one table).
func publishRecord(ctx context.Context, env *Env, pub *managed.Published, filters, references []string, joined []joinedReads) ([][]any, error) {
	changed, err := reconcile(ctx, env.Session, pub, filters)
	if err != nil {
		return nil, err
	}
	if changed {
		if err := record(ctx, env.Session, pub); err != nil {
			return nil, err
		}
	}
	// What the version reads, as of now, even when nothing else changed:
	// a re-publish in the transaction of a DDL that retyped or renamed
	// them is what lets that DDL commit (see managed 009).
	ver, reads := strconv.Itoa(pub.Version), "{"+strings.Join(quoteArray(references), ",")+"}"
	if _, err := env.Session.Query(ctx, managed.RecordReads, &pub.Publication, &ver, &reads); err != nil {
		return nil, notManaged(err)
	}
	if joined == nil {
		joined = []joinedReads{}
	}
	js, err := json.Marshal(joined)
	if err != nil {
		return nil, err
	}
	jsText := string(js)
	if _, err := env.Session.Query(ctx, managed.RecordJoinedReads, &pub.Publication, &ver, &jsText); err != nil {
		return nil, notManaged(err)
	}
	return [][]any{{pub.Publication, int32(pub.Version), int32(pub.Minor), describeColumns(pub.Columns)}}, nil
}

func publishArgs(args Args) (name string, version int, query string, err error) {
	name = args.Text("name")
	if !publicationName.MatchString(name) {
		return "", 0, "", pgerr.Errorf(pgerr.InvalidParameterValue, "invalid publication name %q", name).
			WithHint("Use lower-case letters, digits and _, starting with a letter or _ (at most 63).")
	}
	n, ok, err := args.Int("version")
	if err != nil {
		return "", 0, "", err
	}
	if !ok || n < 1 || n > 1<<30 {
		return "", 0, "", pgerr.Errorf(pgerr.InvalidParameterValue, "invalid version %s: versions are whole numbers from 1", nullText(args["version"]))
	}
	if args["query"] == nil || strings.TrimSpace(*args["query"]) == "" {
		return "", 0, "", pgerr.Errorf(pgerr.InvalidParameterValue, "the query must not be empty").WithHint("Give the SELECT that defines the publication.")
	}
	return name, int(n), *args["query"], nil
}

func nullText(v *string) string {
	if v == nil {
		return "NULL"
	}
	return strconv.Quote(*v)
}

// checkOwner claims the name in the catalog for this system, or refuses it
// when another system has it. An unreachable catalog cannot say: the owner's
// own record decides, and the catalog judges when the call is applied.
func (env *Env) checkOwner(ctx context.Context, name string) error {
	x := env.Executor
	if x.Names == nil {
		return nil
	}
	owner, err := x.Names.Claim(ctx, name, x.System)
	if err != nil || owner == x.System {
		return nil
	}
	return pgerr.Errorf(pgerr.DuplicateObject, "publication %q belongs to system %q", name, owner).
		WithHint("Publication names are unique across systems: choose another name.")
}

// checkPublisher refuses a caller that is not a member of the role that
// owns the table it publishes: Postgres's own rule for CREATE PUBLICATION,
// checked here for a clear message; _rejot.record_published checks it
// again.
func checkPublisher(ctx context.Context, sess Session, table uint32, source string) error {
	oid := strconv.FormatUint(uint64(table), 10)
	rows, err := sess.Query(ctx, `SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')::text,
			pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text
		FROM pg_catalog.pg_class c WHERE c.oid = $1::oid`, &oid)
	if err != nil || len(rows.Values) == 0 {
		return err // a table gone meanwhile: the record refuses it
	}
	r := rows.Values[0]
	if *r[0] == "true" {
		return nil
	}
	return notOwner(*r[1], source, "publish it", *r[2])
}

// notOwner is the refusal of a caller that does not own (by membership)
// the table a call acts on.
func notOwner(owner, table, action, caller string) error {
	o := pgx.Identifier{owner}.Sanitize()
	return pgerr.Errorf(pgerr.InsufficientPrivilege, "only members of role %s, which owns %s, may %s", o, table, action).
		WithHint("Call as %s (SET ROLE %s), or have it granted to you (GRANT %s TO %s).", o, o, o, pgx.Identifier{caller}.Sanitize())
}

func publicColumns(v *Validated) []managed.Column {
	cols := make([]managed.Column, len(v.Columns))
	for i, c := range v.Columns {
		cols[i] = managed.Column{Name: c.Name, Type: c.Type, TypeOID: c.TypeOID, TypeMod: c.TypeMod, IsKey: c.IsKey, Nullable: c.Nullable}
	}
	return cols
}

// reconcile compares the new definition with this system's record of the
// same version, in the caller's transaction (locking the record), sets the
// minor version and the merged columns, and reports whether anything is
// to be recorded. filters are the new query's WHERE condition, as
// Projection.Filter normalises it: of the stored form first, then of the
// query as given.
func reconcile(ctx context.Context, sess Session, pub *managed.Published, filters []string) (bool, error) {
	name, version := pub.Publication, strconv.Itoa(pub.Version)
	// Serialise publishes of one version: FOR UPDATE below locks nothing
	// while the version does not exist yet.
	if _, err := sess.Query(ctx, managed.LockVersion, &name, &version, &pub.Source); err != nil {
		return false, notManaged(err)
	}
	rows, err := sess.Query(ctx, managed.LockPublished, &name, &version)
	if err != nil {
		return false, notManaged(err)
	}
	if len(rows.Values) == 0 {
		return true, nil
	}
	r := rows.Values[0]
	if *r[5] == StatusRetired {
		latest, _ := strconv.Atoi(*r[4])
		return false, pgerr.Errorf(pgerr.ObjectNotInPrerequisiteState, "publication %s version %d is retired", name, pub.Version).
			WithHint("Publish version %d.", latest+1)
	}
	if err := sameFilter(name, pub.Version, *r[1], filters, *r[4]); err != nil {
		return false, err
	}
	minor, _ := strconv.Atoi(*r[0])
	var old []managed.Column
	if err := json.Unmarshal([]byte(*r[2]), &old); err != nil {
		return false, fmt.Errorf("corrupt record of %s version %d: %w", name, pub.Version, err)
	}
	merged, change, reason := catalog.Compare(old, pub.Columns, minor+1)
	switch {
	case change == catalog.Breaking:
		latest, _ := strconv.Atoi(*r[4])
		return false, pgerr.Errorf(pgerr.FeatureNotSupported, "publication %s version %d cannot change this way: %s", name, pub.Version, reason).
			WithHint("Subscribers rely on version %d. Publish the new shape as version %d, and deprecate version %d when they have moved.", pub.Version, latest+1, pub.Version)
	case change == catalog.Compatible:
		pub.Minor = minor + 1
	default:
		// The same columns from another query (a refactor of the table):
		// the same minor, as the public schema is the same; the new
		// query is recorded, and the capture fills the state with it.
		pub.Minor = minor
	}
	pub.Columns = merged
	return pub.Minor != minor || pub.Query != *r[1] || pub.Description != *r[3], nil
}

// sameFilter refuses a re-publish that changes which rows a version has:
// subscribers hold the rows of the recorded filter, and a new one would
// leave rows it drops in their tables, or never bring those it adds.
// Filters are compared as Postgres's parser reads them, deparsed with
// column references unqualified, so layout, case and table qualification
// do not count. The new filter is given as the stored form has it, then
// as the caller wrote it: a record made by an older release keeps the
// caller's text.
func sameFilter(name string, version int, recordedQuery string, filters []string, latest string) error {
	oldFilter, ok := recordedFilter(recordedQuery)
	if !ok || slices.Contains(filters, oldFilter) {
		return nil // a record this release cannot read was checked when it was made
	}
	filter := filters[0]
	show := func(f string) string {
		if f == "" {
			return "none"
		}
		return f
	}
	next, _ := strconv.Atoi(latest)
	return pgerr.Errorf(pgerr.FeatureNotSupported, "publication %s version %d cannot change which rows it has: its filter is %s, the new query's is %s",
		name, version, show(oldFilter), show(filter)).
		WithHint("Subscribers rely on the rows of version %d. Publish the new filter as version %d, and deprecate version %d when they have moved.", version, next+1, version)
}

// recordedFilter is the filter of a recorded query, of one table or a
// join; ok is false when the query does not analyse.
func recordedFilter(query string) (string, bool) {
	if IsJoin(query) {
		p, err := AnalyzeJoin(query)
		if err != nil {
			return "", false
		}
		return p.Filter, true
	}
	p, err := AnalyzeProjection(query)
	if err != nil {
		return "", false
	}
	return p.Filter, true
}

// record writes the owner's record and the command for the catalog, in the
// caller's transaction: the call takes effect exactly when it commits.
func record(ctx context.Context, sess Session, pub *managed.Published) error {
	cols, err := json.Marshal(pub.Columns)
	if err != nil {
		return err
	}
	version, minor := strconv.Itoa(pub.Version), strconv.Itoa(pub.Minor)
	key, colsText := "{"+strings.Join(quoteArray(pub.KeyColumns), ",")+"}", string(cols)
	tables := pub.Tables
	if len(tables) == 0 {
		tables = []string{pub.Source}
	}
	tablesText := "{" + strings.Join(quoteArray(tables), ",") + "}"
	// The record and its command, whose payload _rejot makes of the record.
	_, err = sess.Query(ctx, managed.RecordPublishedTables, &pub.Publication, &version, &minor, &pub.Query, &pub.Source, &key, &colsText,
		&pub.Description, &pub.Owner, &pub.Database, &tablesText)
	return notManaged(err)
}

func quoteArray(items []string) []string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	}
	return out
}

// notManaged explains a missing managed schema (its functions are called:
// 3F000 without the schema, 42883 without this release's functions).
func notManaged(err error) error {
	var qe *pgerr.Error
	if errors.As(err, &qe) && (qe.Code == pgerr.UndefinedTable || qe.Code == pgerr.InvalidSchemaName ||
		qe.Code == pgerr.UndefinedFunction && strings.Contains(qe.Message, managed.Schema+".")) {
		return pgerr.Errorf(pgerr.UndefinedTable, "this database is not managed by the sidecar yet (schema %s is missing)", managed.Schema).
			WithHint("The sidecar installs %s when it starts: check its log for why it could not.", managed.Schema)
	}
	return err
}

func describeColumns(cols []managed.Column) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = c.Name + " " + c.Type
		if c.IsKey {
			parts[i] += " key"
		}
	}
	return strings.Join(parts, ", ")
}

// inArg moves an error's position from inside a string argument to the
// statement: exact for '...' and $$...$$ literals written without escapes.
// An error that is not a Postgres error is returned as it is.
func (env *Env) inArg(name string, err error) error {
	var e *pgerr.Error
	if !errors.As(err, &e) {
		return err
	}
	a := env.args[name]
	if a == nil || e.Position == 0 || env.Call == nil {
		e.Position = 0
		return e
	}
	if a.Kind != ArgString {
		e.Position = 0
		return e
	}
	start, exact := literalStart(env.Call.Query, a)
	if exact {
		e.Position = start + e.Position
	} else {
		e.Position = a.Location + 1
	}
	return e
}

// literalStart finds where a string constant's content starts in query.
func literalStart(query string, a *Arg) (int, bool) {
	loc := a.Location
	if loc < 0 || loc >= len(query) {
		return 0, false
	}
	rest := query[loc:]
	start := loc + 1
	if rest[0] == '$' {
		end := strings.IndexByte(rest[1:], '$')
		if end < 0 {
			return 0, false
		}
		start = loc + end + 2
	} else if rest[0] != '\'' {
		return 0, false
	}
	if start+len(a.Value) > len(query) || query[start:start+len(a.Value)] != a.Value {
		return 0, false
	}
	return start, true
}
