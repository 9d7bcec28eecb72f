package proxy

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/sql"
)

// A query over the catalog relations runs in the client's own upstream
// session, rewritten to read the relations' rows from parameters (see
// sql.QueryRelations): with the client's privileges, never the sidecar's.

// relationsSimple answers a query over the catalog relations in the
// simple protocol: text results, with the upstream's row description.
func (s *session) relationsSimple(query string, st sql.Statement) (bool, error) {
	if s.inAbortedTransaction() {
		return false, s.fail(errAborted, query)
	}
	res, err := s.srv.Executor.QueryRelations(s.ctx, query, st, nil, upstreamSession{s})
	if err != nil {
		return false, s.fail(err, query)
	}
	out := appendEncoded(nil, relationRowDescription(res.Fields, nil))
	out = appendRelationRows(out, res)
	return true, s.reply(out)
}

// executeRelations runs a bound query over the catalog relations.
func (s *session) executeRelations(lp *localPortal) error {
	if s.inAbortedTransaction() {
		return s.fail(errAborted, lp.stmt.query)
	}
	b := lp.raw
	q := &sql.RawQuery{Params: b.Parameters, ParamOIDs: lp.stmt.params, ParamFormats: b.ParameterFormatCodes,
		ResultFormats: b.ResultFormatCodes}
	res, err := s.srv.Executor.QueryRelations(s.ctx, lp.stmt.query, lp.stmt.st, q, upstreamSession{s})
	if err != nil {
		return s.fail(err, lp.stmt.query)
	}
	return s.reply(appendRelationRows(nil, res))
}

// relationRowDescription describes the result fields in the formats the
// client asked for.
func relationRowDescription(fields []pgconn.FieldDescription, formats []int16) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(fields))}
	for i, f := range fields {
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(f.Name), TableOID: f.TableOID,
			TableAttributeNumber: f.TableAttributeNumber, DataTypeOID: f.DataTypeOID,
			DataTypeSize: f.DataTypeSize, TypeModifier: f.TypeModifier, Format: formatFor(formats, i)}
	}
	return rd
}

// appendRelationRows relays the rows and command tag unchanged.
func appendRelationRows(dst []byte, res *sql.RelationRows) []byte {
	for _, row := range res.Rows {
		dst = appendEncoded(dst, &pgproto3.DataRow{Values: row})
	}
	return appendEncoded(dst, &pgproto3.CommandComplete{CommandTag: []byte(res.Tag)})
}

// Prepare parses and describes a statement on the internal statement,
// closed again after.
func (u upstreamSession) Prepare(ctx context.Context, query string, paramOIDs []uint32) (*pgconn.StatementDescription, error) {
	msgs := append(u.s.closeLeaked(), parseMsg(query, paramOIDs), appendCString([]byte{'D', 'S'}, internalStmt),
		closeMsg('S', internalStmt))
	sd := &pgconn.StatementDescription{}
	err := u.s.runInternal(ctx, newSink(), msgs, func(m sinkMsg) {
		switch m.typ {
		case 't':
			var pd pgproto3.ParameterDescription
			if pd.Decode(m.body) == nil {
				sd.ParamOIDs = pd.ParameterOIDs
			}
		case 'T':
			sd.Fields = decodeFields(m.body)
		}
	})
	if err != nil {
		return nil, err
	}
	return sd, nil
}

// Run runs a statement with raw parameters and result formats and
// collects its rows, at most maxBytes of them: past that the statement is
// cancelled, the rest of its rows read and dropped, and ErrResultTooLarge
// returned (the caller fails the statement, which aborts the transaction
// as any failed statement would).
func (u upstreamSession) Run(ctx context.Context, q sql.RawQuery, maxBytes int) (*sql.RelationRows, error) {
	s := u.s
	bind := &pgproto3.Bind{DestinationPortal: internalStmt, PreparedStatement: internalStmt, ParameterFormatCodes: q.ParamFormats,
		Parameters: q.Params, ResultFormatCodes: q.ResultFormats}
	encoded, err := bind.Encode(nil)
	if err != nil {
		return nil, err
	}
	bindMsg := append([]byte{'B'}, encoded[5:]...) // as sendInternal takes it: the type, then the body
	msgs := s.executeMsgs(parseMsg(q.SQL, q.ParamOIDs), bindMsg)
	sink := newSink()
	sink.limit = maxBytes
	res, over := &sql.RelationRows{}, false
	err = s.runInternal(ctx, sink, msgs, func(m sinkMsg) {
		switch m.typ {
		case 'T':
			res.Fields = decodeFields(m.body)
		case 'D':
			var dr pgproto3.DataRow
			if dr.Decode(m.body) == nil {
				res.Rows = append(res.Rows, dr.Values) // m.body is the sink's own copy
			}
		case 'C':
			var cc pgproto3.CommandComplete
			if cc.Decode(m.body) == nil {
				res.Tag = string(cc.CommandTag)
			}
		case overBudget:
			over, res.Rows = true, nil
			s.cancelStatement(ctx)
		}
	})
	if over {
		return nil, sql.ErrResultTooLarge
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// closeLeaked closes the internal statement a failed internal query may
// have left behind.
func (s *session) closeLeaked() [][]byte {
	if s.leaked {
		return [][]byte{closeMsg('S', internalStmt)}
	}
	return nil
}

// executeMsgs are the messages that run a statement once on the internal
// statement and portal and close both again, after closing what a failed
// internal query left behind: parse and bind, describe, execute, close.
func (s *session) executeMsgs(parse, bind []byte) [][]byte {
	return append(s.closeLeaked(), parse, bind, appendCString([]byte{'D', 'P'}, internalStmt),
		appendInt32(appendCString([]byte{'E'}, internalStmt), 0), closeMsg('P', internalStmt), closeMsg('S', internalStmt))
}

func parseMsg(query string, oids []uint32) []byte {
	parse := appendInt16(appendCString(appendCString([]byte{'P'}, internalStmt), query), int16(len(oids)))
	for _, oid := range oids {
		parse = appendInt32(parse, int32(oid))
	}
	return parse
}

// runInternal sends the sidecar's own messages and hands their replies to
// each; an error from the server is returned as a *pgconn.PgError.
func (s *session) runInternal(ctx context.Context, sink *internalSink, msgs [][]byte, each func(sinkMsg)) error {
	s.leaked = true
	kinds, err := s.sendInternal(sink, msgs...)
	if err != nil {
		return err
	}
	pgErr, err := sink.collect(ctx, kinds, each)
	if err != nil {
		return err
	}
	if pgErr != nil {
		return pgconn.ErrorResponseToPgError(pgErr)
	}
	s.leaked = false
	return nil
}

func decodeFields(body []byte) []pgconn.FieldDescription {
	var rd pgproto3.RowDescription
	if rd.Decode(body) != nil {
		return nil
	}
	fields := make([]pgconn.FieldDescription, len(rd.Fields))
	for i, f := range rd.Fields {
		fields[i] = pgconn.FieldDescription{Name: string(f.Name), TableOID: f.TableOID, TableAttributeNumber: f.TableAttributeNumber,
			DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize, TypeModifier: f.TypeModifier, Format: f.Format}
	}
	return fields
}

// cancelStatement asks the server to cancel what the client's upstream
// backend runs: the sidecar's own statement, since the frontend loop sends
// nothing else until that statement's replies are in. A request that
// arrives after it ended finds the backend waiting for a command, which
// ignores it.
func (s *session) cancelStatement(ctx context.Context) {
	s.mu.Lock()
	key := s.cancelKey
	s.mu.Unlock()
	if len(key) < 8 {
		return // the rest is read and dropped instead
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.srv.Upstream.Cancel(ctx, cancelPacket(key)); err != nil {
		s.log.Debug().Err(err).Msg("cannot cancel a catalog query over its budget")
	}
}
