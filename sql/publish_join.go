package sql

import (
	"context"
	"errors"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// runPublishJoin publishes a join projection (see join.go): validated
// through the caller's session, the caller a member of the role owning
// each table, recorded with every table it reads.
func runPublishJoin(ctx context.Context, env *Env, args Args, name string, version int, query string) ([][]any, error) {
	p, perr := AnalyzeJoin(query)
	if perr != nil {
		return nil, env.inArg("query", perr)
	}
	v, err := ValidateJoin(ctx, env.Session, p)
	if err != nil {
		var e *pgerr.Error
		if errors.As(err, &e) {
			return nil, env.inArg("query", e)
		}
		return nil, err
	}
	for _, t := range v.Resolved {
		if err := checkPublisher(ctx, env.Session, t.OID, t.Source); err != nil {
			return nil, err
		}
	}
	if err := env.checkOwner(ctx, name); err != nil {
		return nil, err
	}
	cols := make([]managed.Column, len(v.Columns))
	for i, c := range v.Columns {
		cols[i] = managed.Column{Name: c.Name, Type: c.Type, TypeOID: c.TypeOID, TypeMod: c.TypeMod, IsKey: c.IsKey, Nullable: c.Nullable}
	}
	pub := &managed.Published{Publication: name, Version: version, Owner: env.Executor.System,
		Database: env.Executor.Database, Query: v.Stored, Source: v.Source(), Tables: v.TableNames(), KeyColumns: v.Key,
		Columns: cols, Description: args.Text("description")}
	filters := []string{p.Filter}
	if stored, err := AnalyzeJoin(v.Stored); err == nil {
		filters = append([]string{stored.Filter}, p.Filter)
	}
	joined := make([]joinedReads, 0, len(p.Tables)-1)
	for i := 1; i < len(p.Tables); i++ {
		joined = append(joined, joinedReads{Table: v.Resolved[i].Source, Columns: p.Tables[i].References})
	}
	return publishRecord(ctx, env, pub, filters, p.Tables[0].References, joined)
}
