package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/replicator/capture/paced"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// WALReader captures an owner's database: one logical replication slot
// (rejot_<system>, pgoutput) and one Postgres publication limited to the
// tables its publication versions read. For each source transaction it
// projects the changed rows of every affected version with Postgres itself,
// appends one group per version to the log, and only then confirms the
// transaction's end to the slot, so a crash replays what the log may not
// have (and the log skips what it has).
type WALReader struct {
	URL     string // the owner's database, as a role with REPLICATION
	System  string
	Log     eventlog.Writer
	Sources []Source
	Logger  zerolog.Logger
	// StatusInterval is how often the slot hears from us (default 1s).
	StatusInterval time.Duration
	// FillSplitPages is the table size, in blocks, from which a first
	// fill reads the table in two halves at once (default 2048: 16 MB).
	FillSplitPages int64

	// Failed, when set, hears of a version that cannot be computed: it is
	// no longer captured by this reader (see failure.go). Mended hears,
	// for each version the reader captures, that its state in the log is
	// whole as the reader begins (filled again if it had failed).
	Failed func(p VersionProblem, definition string)
	Mended func(v eventlog.Version)

	fillAll bool // the slot is new: every version is filled again
}

// fail tells Failed of a version's failure.
func (p *WALReader) fail(src *Source, cause *versionError) {
	if p.Failed != nil {
		p.Failed(VersionProblem{Version: src.Version, Problem: problemText(cause), Schema: cause.schema}, src.Definition())
	}
}

// SlotName is the replication slot (and Postgres publication) of a system.
func SlotName(system string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(system) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := "rejot_" + b.String()
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

// Run captures until ctx ends or the connection fails; the caller restarts
// it with backoff.
func (p *WALReader) Run(ctx context.Context) error {
	// What the log remembers of earlier appends holds while this process
	// alone appends for the system; another process may have had the
	// slot since (a restart elsewhere, a rolling deploy): ask the log.
	p.Log.Forget()
	conn, err := connectOwner(ctx, p.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := p.preparePublication(ctx, conn); err != nil {
		return err
	}
	repl, paced, err := p.replicationConn(ctx)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	created, err := p.ensureSlot(ctx, conn, repl)
	if err != nil {
		return err
	}
	slot := SlotName(p.System)
	// A new slot has seen nothing before it: a version the log already
	// holds (its table dropped and made again, every version retired in
	// between, or the slot dropped by hand) may have missed changes, so
	// every version is filled again from a snapshot after it. Should that
	// fail, the slot goes too, so that the next start fills again.
	p.fillAll = created
	since, err := p.fill(ctx)
	if err != nil {
		if created {
			p.dropNewSlot(ctx, conn, slot)
		}
		return err
	}
	// Protocol 2 where the server has it (14+), without streaming of
	// transactions still in progress: whole committed transactions are
	// what the log appends, and a large one is appended in parts anyway.
	proto := "1"
	major, _, _ := strings.Cut(repl.ParameterStatus("server_version"), ".")
	if v, _ := strconv.Atoi(major); v >= 14 {
		proto = "2"
	}
	err = pglogrepl.StartReplication(ctx, repl, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '" + proto + "'", "publication_names '" + slot + "'", "streaming 'off'"}})
	if err != nil {
		return fmt.Errorf("cannot start replication: %w", err)
	}
	p.Logger.Info().Str("system", p.System).Str("slot", slot).Str("protocol", proto).Msg("capture started")
	s := &session{p: p, conn: conn, repl: repl, paced: paced, rels: map[uint32]*relation{}, since: since}
	defer func() {
		s.wait() // the appender uses the connections closed next
		if s.open != nil {
			s.open.Rollback(context.WithoutCancel(ctx))
		}
	}()
	return s.loop(ctx)
}

// preparePublication keeps the Postgres publication to exactly the tables
// the sources read (never FOR ALL TABLES, which would stop UPDATE and
// DELETE on tables without a replica identity).
func (p *WALReader) preparePublication(ctx context.Context, conn *pgx.Conn) error {
	name := pgx.Identifier{SlotName(p.System)}.Sanitize()
	seen := map[string]bool{}
	var tables []string
	for _, s := range p.Sources {
		names := []string{pgx.Identifier{s.Schema, s.Table}.Sanitize()}
		if s.Join != nil {
			for _, t := range s.Join.tables[1:] {
				names = append(names, t.name())
			}
		}
		for _, t := range names {
			if !seen[t] {
				seen[t] = true
				tables = append(tables, t)
			}
		}
	}
	if len(tables) == 0 {
		return errors.New("no publication versions to capture")
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", SlotName(p.System)).Scan(&exists); err != nil {
		return err
	}
	verb := "CREATE PUBLICATION " + name + " FOR TABLE "
	if exists {
		verb = "ALTER PUBLICATION " + name + " SET TABLE "
	}
	if _, err := conn.Exec(ctx, verb+strings.Join(tables, ", ")); err != nil {
		return fmt.Errorf("cannot prepare publication %s: %w", name, err)
	}
	return nil
}

func (p *WALReader) replicationConn(ctx context.Context) (*pgconn.PgConn, *paced.Reader, error) {
	cfg, err := pgconn.ParseConfig(p.URL)
	if err != nil {
		return nil, nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	if cfg.RuntimeParams["application_name"] == "" {
		// What pg_stat_replication shows for the capture.
		cfg.RuntimeParams["application_name"] = SlotName(p.System)
	}
	// WAL arrives as many small messages: read it in large pieces, and
	// let some gather before each read (see paced.Reader).
	var reader *paced.Reader
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			reader = paced.New(c)
		}
		return c, err
	}
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		if reader == nil {
			reader = paced.New(nil)
		}
		reader.Wrap(r)
		return pgproto3.NewFrontend(bufio.NewReaderSize(reader, 256<<10), w)
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot open a replication connection (the role needs REPLICATION, the server wal_level=logical): %w", err)
	}
	return repl, reader, nil
}

// ensureSlot creates the system's slot unless it exists, and says whether
// it did. A slot the server has invalidated (it kept more WAL than
// max_slot_wal_keep_size allows: wal_status 'lost') can never be read
// again, and a capture that kept trying would fail for ever: it is
// dropped and made anew, and every version is filled again.
func (p *WALReader) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn) (bool, error) {
	slot := SlotName(p.System)
	// wal_status as json: the column is there from Postgres 13 on.
	var status *string
	err := conn.QueryRow(ctx, "SELECT to_jsonb(s)->>'wal_status' FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1", slot).Scan(&status)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return false, err
	case status == nil || *status != "lost":
		return false, nil
	default:
		p.Logger.Warn().Str("system", p.System).Str("slot", slot).
			Msg("the server invalidated the replication slot (max_slot_wal_keep_size): it is made anew, and every version filled again")
		if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot($1)", slot); err != nil {
			return false, fmt.Errorf("cannot drop the invalidated replication slot %s: %w", slot, err)
		}
	}
	_, err = pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return false, fmt.Errorf("cannot create replication slot %s: %w", slot, err)
	}
	p.Logger.Info().Str("system", p.System).Str("slot", slot).Msg("replication slot created")
	return true, nil
}

// dropNewSlot drops the slot Run has just created when the fills it needs
// failed (best effort: the slot is not active, nothing streams from it
// yet).
func (p *WALReader) dropNewSlot(ctx context.Context, conn *pgx.Conn, slot string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot($1)", slot); err != nil {
		p.Logger.Warn().Err(err).Str("system", p.System).Str("slot", slot).
			Msg("cannot drop the replication slot whose first fills failed; versions the log already held may miss changes")
		return
	}
	p.Logger.Info().Str("system", p.System).Str("slot", slot).Msg("replication slot dropped: its first fills failed, the next start fills again")
}
