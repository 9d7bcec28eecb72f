package apply

import (
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// textArray is a column of a span's values, sent as one text[] parameter
// (NULL elements for nil values). pgx encodes a []eventlog.Value through
// reflection, element by element, which took about a sixth of a
// sidecar's time applying a span; as an ArrayGetter of TextValuers each
// element is copied into the message without reflection or allocation.
type textArray []eventlog.Value

func (a textArray) Dimensions() []pgtype.ArrayDimension {
	if a == nil {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(len(a)), LowerBound: 1}}
}

func (a textArray) Index(i int) any {
	if a[i] == nil {
		return nil
	}
	return textElement{a[i]}
}

func (a textArray) IndexType() any { return textElement{} }

// textElement is a non-NULL value of a textArray. One pointer wide, it is
// held in an interface without an allocation.
type textElement struct{ v *string }

func (e textElement) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: *e.v, Valid: true}, nil
}
