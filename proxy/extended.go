package proxy

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/sql"
)

// localStmt is a prepared statement that calls the API: the sidecar keeps it
// and answers Bind, Describe, Execute and Close for it.
type localStmt struct {
	query  string
	st     sql.Statement
	params []uint32
	cols   []sql.Column
	fields []pgconn.FieldDescription // result of a query over the catalog relations
}

// localPortal is a bound localStmt.
type localPortal struct {
	stmt    *localStmt
	params  []*string
	formats []int16
	raw     *pgproto3.Bind // a query over the catalog relations takes its values as sent
}

// onParse handles Parse: a statement that calls the API is kept locally,
// anything else goes upstream.
func (s *session) onParse(n int) error {
	if n > s.srv.maxIntercepted() {
		return s.onLarge('P', n)
	}
	body, err := s.cr.body(n)
	if err != nil {
		return err
	}
	name, rest, ok1 := cstring(body)
	query, rest, ok2 := cstring(rest)
	delete(s.guarded, name)
	if ok1 && ok2 && s.intercept && s.isAuthed() {
		rejot, ddl := sql.MentionsRejot([]byte(query)), s.guarding() && sql.MentionsDDL([]byte(query))
		if rejot || ddl {
			st, err := sql.ParseOne(query)
			if err == nil && st.Intercepted() {
				return s.localParse(body, name, query, st, paramOIDs(rest))
			}
			if err == nil && ddl && st.Guarded {
				if s.guarded == nil {
					s.guarded = map[string]bool{}
				}
				s.guarded[name] = true
			}
		}
	}
	delete(s.stmts, name)
	return s.forwardBody('P', body)
}

func paramOIDs(b []byte) []uint32 {
	if len(b) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	oids := make([]uint32, 0, n)
	for i := 0; i < n && len(b) >= 4; i++ {
		oids = append(oids, binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	return oids
}

// ready drains the connection before a local reply. done is true when the
// message needs no answer from the sidecar: the server is skipping to Sync
// (the message is ignored, as Postgres would), or it is in COPY FROM STDIN
// (the message is relayed for the server to judge).
func (s *session) ready(typ byte, body []byte) (done bool, err error) {
	skip, copying, err := s.drain()
	switch {
	case err != nil:
		return true, err
	case skip:
		return true, nil
	case copying:
		return true, s.forwardBody(typ, body)
	}
	return false, nil
}

func (s *session) localParse(body []byte, name, query string, st sql.Statement, oids []uint32) error {
	if done, err := s.ready('P', body); done {
		return err
	}
	if _, exists := s.stmts[name]; exists && name != "" {
		return s.fail(pgerr.Errorf(pgerr.DuplicatePreparedStatement, "prepared statement %q already exists", name), "")
	}
	if st.Err != nil {
		return s.fail(st.Err, query)
	}
	if s.inAbortedTransaction() {
		return s.fail(errAborted, query)
	}
	ls := &localStmt{query: query, st: st}
	if st.Relations {
		sd, err := s.srv.Executor.DescribeRelations(s.ctx, query, st, oids, upstreamSession{s})
		if err != nil {
			return s.fail(err, query)
		}
		ls.params, ls.fields = sd.ParamOIDs, sd.Fields
	} else {
		params, cols, err := s.srv.Executor.Describe(st.Call, oids)
		if err != nil {
			return s.fail(err, query)
		}
		ls.params, ls.cols = params, cols
	}
	s.stmts[name] = ls
	return s.reply(appendEncoded(nil, &pgproto3.ParseComplete{}))
}

// onPortalMessage handles Bind, Describe, Execute and Close while local
// statements exist: those naming one are answered here.
func (s *session) onPortalMessage(typ byte, n int) error {
	body, err := s.cr.body(n)
	if err != nil {
		return err
	}
	switch typ {
	case 'B':
		portal, rest, _ := cstring(body)
		stmt, _, _ := cstring(rest)
		if ls, ok := s.stmts[stmt]; ok {
			return s.localBind(body, portal, ls)
		}
		delete(s.portals, portal)
		if s.guarded[stmt] && s.guarding() {
			// A portal lives in one transaction: the one its Execute runs in.
			if err := s.sendGuard(); err != nil {
				return err
			}
		}
	case 'D', 'C':
		if len(body) < 2 {
			break
		}
		name, _, _ := cstring(body[1:])
		if typ == 'C' && body[0] == 'S' {
			delete(s.guarded, name)
		}
		if ls, lp, ok := s.lookup(body[0], name); ok {
			if typ == 'C' {
				return s.localClose(body, name)
			}
			return s.localDescribe(body, ls, lp)
		}
	case 'E':
		name, _, _ := cstring(body)
		if lp, ok := s.portals[name]; ok {
			return s.localExecute(body, lp)
		}
	}
	return s.forwardBody(typ, body)
}

func (s *session) lookup(kind byte, name string) (*localStmt, *localPortal, bool) {
	if kind == 'S' {
		ls, ok := s.stmts[name]
		return ls, nil, ok
	}
	lp, ok := s.portals[name]
	return nil, lp, ok
}

func (s *session) localBind(body []byte, portal string, ls *localStmt) error {
	if done, err := s.ready('B', body); done {
		return err
	}
	var b pgproto3.Bind
	if err := b.Decode(body); err != nil {
		return &ProtocolError{Msg: "invalid Bind message: " + err.Error()}
	}
	if len(b.Parameters) != len(ls.params) {
		return s.fail(pgerr.Errorf(pgerr.ProtocolViolation,
			"bind message supplies %d parameters, but prepared statement %q requires %d",
			len(b.Parameters), b.PreparedStatement, len(ls.params)), "")
	}
	if ls.st.Relations {
		// Decode points into the read buffer, which the next message reuses.
		for i, v := range b.Parameters {
			if v != nil {
				b.Parameters[i] = append([]byte{}, v...)
			}
		}
		b.ParameterFormatCodes = append([]int16(nil), b.ParameterFormatCodes...)
		b.ResultFormatCodes = append([]int16(nil), b.ResultFormatCodes...)
		s.portals[portal] = &localPortal{stmt: ls, formats: b.ResultFormatCodes, raw: &b}
		return s.reply(appendEncoded(nil, &pgproto3.BindComplete{}))
	}
	params, err := textParams(s.typeMap(), ls.params, b.ParameterFormatCodes, b.Parameters)
	if err != nil {
		return s.fail(err, "")
	}
	s.portals[portal] = &localPortal{stmt: ls, params: params, formats: b.ResultFormatCodes}
	return s.reply(appendEncoded(nil, &pgproto3.BindComplete{}))
}

// textParams turns Bind parameters into text, decoding binary ones by type.
func textParams(typeMap *pgtype.Map, oids []uint32, formats []int16, values [][]byte) ([]*string, error) {
	out := make([]*string, len(values))
	for i, v := range values {
		if v == nil {
			continue
		}
		text := string(v)
		if formatFor(formats, i) == 1 {
			t, ok := typeMap.TypeForOID(oids[i])
			if !ok {
				return nil, pgerr.Errorf(pgerr.InvalidBinaryRepresentation, "unsupported binary format for parameter $%d", i+1)
			}
			val, err := t.Codec.DecodeValue(typeMap, oids[i], 1, v)
			if err != nil {
				return nil, pgerr.Errorf(pgerr.InvalidBinaryRepresentation, "incorrect binary data format in bind parameter %d", i+1)
			}
			enc, err := typeMap.Encode(oids[i], 0, val, nil)
			if err != nil {
				return nil, pgerr.Errorf(pgerr.InvalidBinaryRepresentation, "incorrect binary data format in bind parameter %d", i+1)
			}
			text = string(enc)
		}
		out[i] = &text
	}
	return out, nil
}

func (s *session) localDescribe(body []byte, ls *localStmt, lp *localPortal) error {
	if done, err := s.ready('D', body); done {
		return err
	}
	var out []byte
	cols, formats := []sql.Column(nil), []int16(nil)
	if ls != nil {
		out = appendEncoded(out, &pgproto3.ParameterDescription{ParameterOIDs: ls.params})
		cols = ls.cols
	} else {
		cols, formats = lp.stmt.cols, lp.formats
	}
	stmt := ls
	if stmt == nil {
		stmt = lp.stmt
	}
	switch {
	case stmt.st.Relations:
		out = appendEncoded(out, relationRowDescription(stmt.fields, formats))
	case len(cols) == 0:
		out = appendEncoded(out, &pgproto3.NoData{})
	default:
		out = appendEncoded(out, rowDescription(cols, formats))
	}
	return s.reply(out)
}

func (s *session) localExecute(body []byte, lp *localPortal) error {
	if done, err := s.ready('E', body); done {
		return err
	}
	if lp.raw != nil {
		return s.executeRelations(lp)
	}
	res, err := s.execute(lp.stmt.st, lp.params)
	if err != nil {
		return s.fail(err, lp.stmt.query)
	}
	out, err := dataRows(nil, s.typeMap(), res, lp.formats)
	if err != nil {
		return s.fail(fmt.Errorf("cannot encode the result: %w", err), "")
	}
	out = appendEncoded(out, &pgproto3.CommandComplete{CommandTag: []byte(res.Tag)})
	return s.reply(out)
}

func (s *session) localClose(body []byte, name string) error {
	if done, err := s.ready('C', body); done {
		return err
	}
	if body[0] == 'S' {
		delete(s.stmts, name)
	} else {
		delete(s.portals, name)
	}
	return s.reply(appendEncoded(nil, &pgproto3.CloseComplete{}))
}
