package sql

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/internal/sqlquote"
)

// immutabilityCheck is one expression of a publication that Postgres is
// asked to judge immutable.
type immutabilityCheck struct {
	expr  string // as the check's temporary table names its columns
	typ   string // the type it gives
	shown string // as the caller wrote it, for the error
	at    int    // its position in the query
}

// checkImmutable has Postgres judge checks (the filter last, when filter)
// through the caller's session, each as a generated column of a
// temporary table with columns cols: Postgres refuses a generation
// expression that is not immutable. privilegeHint is the hint when the
// caller may not build the table.
func checkImmutable(ctx context.Context, sess Session, cols string, checks []immutabilityCheck, filter bool, privilegeHint string) error {
	if len(checks) == 0 {
		return nil
	}
	exprs, types := make([]string, len(checks)), make([]string, len(checks))
	for i, c := range checks {
		exprs[i], types[i] = c.expr, c.typ
	}
	script, err := immutabilityScript(cols, exprs, types)
	if err != nil {
		return err
	}
	_, err = sess.Query(ctx, script)
	var qe *pgerr.Error
	if errors.As(err, &qe) && qe.Code == pgerr.InsufficientPrivilege {
		return pgerr.Errorf(pgerr.InsufficientPrivilege, "cannot check that the publication's expressions and filter are immutable: %s", qe.Message).
			WithHint("%s", privilegeHint)
	}
	if !errors.As(err, &qe) || qe.Code != "RJ002" {
		return err
	}
	idx, msg := parseCheckFailure(qe.Message)
	if idx < 0 || idx >= len(checks) {
		return err
	}
	what := "expression"
	if filter && idx == len(checks)-1 {
		what = "filter"
	}
	return pgerr.Errorf(pgerr.InvalidObjectDefinition, "the publication's %s %s is not allowed: %s", what, checks[idx].shown, strings.TrimPrefix(msg, "generation expression ")).
		At(int32(checks[idx].at)).WithHint("A publication may use only immutable functions and operators (no now(), random(), nextval(), volatile or stable functions), so that every change projects the same way.")
}

// immutabilityScript is the DO block of checkImmutable: a temporary table
// of columns cols, each expression added as a generated column of type
// types[i]; RJ002 names the first Postgres refuses; nothing remains.
func immutabilityScript(cols string, exprs, types []string) (string, error) {
	tag, err := sqlquote.DollarTag(append(append([]string{cols}, exprs...), types...)...)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "DO %s\nDECLARE bad int := -1; msg text;\nBEGIN\n  BEGIN\n", tag)
	fmt.Fprintf(&b, "    CREATE TEMP TABLE rejot_immutability_check (%s);\n", cols)
	for i, e := range exprs {
		fmt.Fprintf(&b, "    BEGIN ALTER TABLE pg_temp.rejot_immutability_check ADD COLUMN rejot_c%d %s GENERATED ALWAYS AS (%s) STORED;\n", i, types[i], e)
		fmt.Fprintf(&b, "    EXCEPTION WHEN OTHERS THEN bad := %d; GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT; RAISE EXCEPTION USING ERRCODE = 'RJ001'; END;\n", i)
	}
	fmt.Fprintf(&b, "    RAISE EXCEPTION USING ERRCODE = 'RJ000';\n  EXCEPTION WHEN SQLSTATE 'RJ000' OR SQLSTATE 'RJ001' THEN NULL;\n  END;\n")
	fmt.Fprintf(&b, "  IF bad >= 0 THEN RAISE EXCEPTION 'rejot:%%:%%', bad, msg USING ERRCODE = 'RJ002'; END IF;\nEND %s", tag)
	return b.String(), nil
}

// parseCheckFailure reads the index and message of an RJ002 failure.
func parseCheckFailure(msg string) (int, string) {
	rest, ok := strings.CutPrefix(msg, "rejot:")
	if !ok {
		return -1, ""
	}
	num, text, _ := strings.Cut(rest, ":")
	i, err := strconv.Atoi(num)
	if err != nil {
		return -1, ""
	}
	return i, text
}
