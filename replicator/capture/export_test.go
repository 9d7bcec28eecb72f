package capture

// Direct lets the external tests see whether a projection is computed
// without Postgres for these source columns (what Project decides on its
// own).
func Direct(p *Projection, cols []SourceColumn) ([]int, bool) { return p.direct(cols) }
