package capture

// Direct lets the external tests see whether a projection is computed
// without Postgres for these source columns (what Project decides on its
// own).
func Direct(p *Projection, cols []SourceColumn) ([]int, bool) { return p.direct(cols) }

// RecordFailure tells the runner a version failed, as a verify that read
// the owner's record a moment before its table changed would.
func RecordFailure(r *Runner, p VersionProblem) { r.failed(p, ""); r.Wake() }
