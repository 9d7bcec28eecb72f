package proxy

import (
	"bufio"
	"errors"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/sql"
)

type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// appendEncoded appends protocol messages to dst.
func appendEncoded(dst []byte, msgs ...encoder) []byte {
	for _, m := range msgs {
		b, err := m.Encode(dst)
		if err == nil {
			dst = b
		}
	}
	return dst
}

func writeErrorTo(w *bufio.Writer, severity, code, msg string) {
	w.Write(appendEncoded(nil, &pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code, Message: msg}))
}

// errorResponse turns an error into the ErrorResponse the client gets. query
// is the text the error's position refers to.
func errorResponse(err error, query string) *pgproto3.ErrorResponse {
	// A failed query the call ran carries its position as InternalPosition,
	// which is not sent: it is in that query, not in the client's.
	var se *pgerr.Error
	if !errors.As(err, &se) {
		se = &pgerr.Error{Code: pgerr.InternalError, Message: "rejot: " + err.Error()}
	}
	return &pgproto3.ErrorResponse{
		Severity: "ERROR", SeverityUnlocalized: "ERROR",
		Code: se.Code, Message: se.Message, Detail: se.Detail, Hint: se.Hint,
		Position: int32(charPosition(query, se.Position)),
	}
}

// charPosition converts a 1-based byte position into the 1-based character
// position Postgres reports.
func charPosition(query string, bytePos int) int {
	if bytePos <= 0 || bytePos > len(query)+1 {
		return 0
	}
	prefix := query[:bytePos-1]
	if utf8.ValidString(prefix) {
		return utf8.RuneCountInString(prefix) + 1
	}
	return bytePos
}

// rowDescription describes result columns in the given formats (one code
// for all, one per column, or none for text).
func rowDescription(cols []sql.Column, formats []int16) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, c := range cols {
		rd.Fields[i] = pgproto3.FieldDescription{
			Name: []byte(c.Name), DataTypeOID: c.TypeOID, DataTypeSize: typeSize(c.TypeOID),
			TypeModifier: -1, Format: formatFor(formats, i),
		}
	}
	return rd
}

func typeSize(oid uint32) int16 {
	switch oid {
	case sql.OIDBool:
		return 1
	case sql.OIDInt4, sql.OIDDate:
		return 4
	case sql.OIDInt8:
		return 8
	}
	return -1
}

func formatFor(formats []int16, i int) int16 {
	switch {
	case len(formats) == 0:
		return 0
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

// dataRows encodes result rows in the requested formats.
func dataRows(dst []byte, types *pgtype.Map, res *sql.Result, formats []int16) ([]byte, error) {
	for _, row := range res.Rows {
		dr := &pgproto3.DataRow{Values: make([][]byte, len(row))}
		for i, v := range row {
			if v == nil {
				continue
			}
			buf, err := types.Encode(res.Columns[i].TypeOID, formatFor(formats, i), v, nil)
			if err != nil {
				return dst, err
			}
			if buf == nil {
				buf = []byte{}
			}
			dr.Values[i] = buf
		}
		dst = appendEncoded(dst, dr)
	}
	return dst, nil
}
