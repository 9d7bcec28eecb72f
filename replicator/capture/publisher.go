package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
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
	conn, err := pgx.Connect(ctx, p.URL)
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
	if err := p.ensureSlot(ctx, conn, repl); err != nil {
		return err
	}
	since, err := p.fill(ctx)
	if err != nil {
		return err
	}
	slot := SlotName(p.System)
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
		t := pgx.Identifier{s.Schema, s.Table}.Sanitize()
		if !seen[t] {
			seen[t] = true
			tables = append(tables, t)
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

func (p *WALReader) replicationConn(ctx context.Context) (*pgconn.PgConn, *pacedReader, error) {
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
	// let some gather before each read (see pacedReader).
	var paced *pacedReader
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			paced = newPacedReader(c)
		}
		return c, err
	}
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		if paced == nil {
			paced = &pacedReader{}
		}
		paced.r = r
		return pgproto3.NewFrontend(bufio.NewReaderSize(paced, 256<<10), w)
	}
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot open a replication connection (the role needs REPLICATION, the server wal_level=logical): %w", err)
	}
	return repl, paced, nil
}

// pacedReader reads the replication stream. The server sends each message
// (a BEGIN, a row, a COMMIT) with a system call of its own as soon as the
// client's receive window has room, so how the client reads decides what
// both sides pay:
//
//   - Live, after a read that found little (less than pacedSmall), it
//     waits pacedPause before reading again, so the messages sent
//     meanwhile come in one system call rather than one each; the pause
//     adds at most pacedPause to a change's latency. While it waits, the
//     socket's low-water mark (SO_RCVLOWAT) is raised: the kernel would
//     otherwise wake the process for each message that arrives (Go's
//     poller, though no one reads), which took a third of the capture's
//     CPU in a catch-up.
//   - Behind — decoding transactions that committed more than pacedBehind
//     ago (the stream says, see Lag) — and when the server is on this
//     host, it waits until pacedFull bytes are queued (or bulkPause), even
//     when some are there already: the server then queues what it sends,
//     cheaply, and sends it in large pieces when the window opens. A
//     client that keeps its window open makes the server send every
//     message on its own, and on loopback the sender also runs the
//     receiver's TCP work: the walsender used up to twice the CPU for the
//     capture that it used for Postgres's own apply worker, which reads
//     slowly. (A reader that took whatever had come while it processed
//     the last piece kept the window open, and so did one that judged
//     "behind" by the size of its last read: a walsender short of CPU
//     sent less, the reads shrank and the window stayed open.) A read
//     that found less than pacedBig is followed by a pacedHold before the
//     wait: the server had sent message by message, each in a packet
//     whose overhead fills the socket's buffer after a few kB, so the
//     next window would fill the same way; held shut, it makes the server
//     queue, and what it queues goes out in large packets. The window
//     is bounded to pacedBuffer so that filling it takes milliseconds
//     (left alone, the kernel grew it to 1.5 MB). A remote server keeps
//     the kernel's sizing: its receiving side runs on this host, not in
//     the walsender, and a small window would cost throughput on a long
//     round trip.
type pacedReader struct {
	r      io.Reader
	conn   net.Conn
	sock   syscall.RawConn // nil: no low-water mark to raise
	last   int             // bytes the last read returned
	bound  bool            // the receive window is bounded (a server on this host)
	behind atomic.Bool     // the stream is behind (Lag)

	deadline time.Time   // the caller's
	stopped  atomic.Bool // Interrupt was called
}

const (
	pacedSmall  = 16 << 10
	pacedPause  = 500 * time.Microsecond
	pacedBuffer = 64 << 10
	pacedFull   = 32 << 10
	pacedBig    = 64 << 10
	pacedHold   = 2 * time.Millisecond
	pacedBehind = 50 * time.Millisecond
	bulkPause   = 10 * time.Millisecond
)

func newPacedReader(conn net.Conn) *pacedReader {
	p := &pacedReader{conn: conn}
	if s, ok := conn.(syscall.Conn); ok {
		p.sock, _ = s.SyscallConn()
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		if ip, ok := tcp.RemoteAddr().(*net.TCPAddr); ok && ip.IP.IsLoopback() {
			p.bound = tcp.SetReadBuffer(pacedBuffer) == nil
		}
	}
	return p
}

// SetDeadline bounds the reads; a zero time removes the bound.
func (p *pacedReader) SetDeadline(t time.Time) error {
	p.deadline = t
	return p.setReadDeadline(t)
}

// setReadDeadline sets the connection's read deadline, unless Interrupt
// was called: then, even if it was called meanwhile, the deadline is now.
func (p *pacedReader) setReadDeadline(t time.Time) error {
	if p.stopped.Load() {
		return nil
	}
	err := p.conn.SetReadDeadline(t)
	if p.stopped.Load() {
		return p.conn.SetReadDeadline(time.Now())
	}
	return err
}

// Interrupt ends the read in progress, and every later one until Resume,
// at once with a timeout; it may be called from another goroutine.
func (p *pacedReader) Interrupt() {
	p.stopped.Store(true)
	p.conn.SetReadDeadline(time.Now())
}

// Resume undoes Interrupt and removes the deadline.
func (p *pacedReader) Resume() {
	p.stopped.Store(false)
	p.deadline = time.Time{}
	p.conn.SetReadDeadline(time.Time{})
}

// Lag tells the reader how long ago the transaction being decoded
// committed; zero when the stream has paused.
func (p *pacedReader) Lag(d time.Duration) {
	if behind := d > pacedBehind; behind != p.behind.Load() {
		p.behind.Store(behind)
	}
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.bound && p.behind.Load() && !p.stopped.Load() {
		if p.last < pacedBig {
			// The window filled with little: the server sent each
			// message as it came, in a packet of its own, and such
			// packets fill the socket's buffer with overhead. Hold the
			// window shut a moment: what the server sends meanwhile is
			// queued on its side in large pieces, and goes out as such.
			time.Sleep(pacedHold)
		}
		// A read returns whatever is there, whatever the low-water mark,
		// so the wait is on the socket's queue: the kernel wakes the
		// poller once pacedFull bytes are in, and each wake-up checks.
		setLowWater(p.sock, pacedFull)
		p.setReadDeadline(time.Now().Add(bulkPause))
		err := p.sock.Read(func(fd uintptr) bool { return queued(fd) >= pacedFull })
		setLowWater(p.sock, 1)
		p.setReadDeadline(p.deadline)
		if err != nil && !timedOut(err) {
			return 0, err
		}
	} else if p.last < pacedSmall {
		setLowWater(p.sock, pacedSmall)
		time.Sleep(pacedPause)
		setLowWater(p.sock, 1)
	}
	n, err := p.r.Read(b)
	p.last = n
	return n, err
}

// queued returns how many bytes a socket holds unread; on an error, as
// many as make a wait end.
func queued(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return math.MaxInt
	}
	return n
}

// setLowWater sets a socket's SO_RCVLOWAT: no wake-up for reading until
// that many bytes are there (a read that does not wait still returns what
// there is).
func setLowWater(sock syscall.RawConn, n int) {
	if sock != nil {
		sock.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n) })
	}
}

func (p *WALReader) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn) error {
	slot := SlotName(p.System)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err := pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return fmt.Errorf("cannot create replication slot %s: %w", slot, err)
	}
	p.Logger.Info().Str("system", p.System).Str("slot", slot).Msg("replication slot created")
	return nil
}

// session is one replication session.
type session struct {
	p         *WALReader
	conn      *pgx.Conn
	repl      *pgconn.PgConn
	paced     *pacedReader // repl's reader
	rels      map[uint32]*relation
	txn       *transaction
	confirmed uint64 // what the slot may forget
	received  uint64 // the server's WAL end, when nothing is in flight
	serverEnd uint64 // the server's WAL end, last heard
	since     map[eventlog.Version]uint64
	// Committed transactions not yet appended: projecting and appending
	// many together is what makes a backlog fast.
	pending       []*transaction
	pendingEvents int
	pendingEnd    uint64
	pendingSince  time.Time  // when the oldest pending transaction arrived
	inflight      chan error // the append in flight, nil when none
	inflightEnd   uint64     // the end of its last transaction
	// open is the log transaction of a large source transaction being
	// appended in parts.
	open eventlog.Tx
}

// Memory bounds: a backlog is appended in batches of at most maxPending
// transactions or maxPendingEvents row changes, and a source transaction
// larger than partEvents is projected and appended in parts as it is
// decoded, into one log transaction that commits with it.
const (
	pauseWait        = 2 * time.Millisecond   // a pause this long appends what is pending
	maxPendingWait   = 5 * time.Millisecond   // what is pending waits no longer than this
	appendPoll       = 500 * time.Microsecond // how often a due batch looks whether the append before it is done
	maxPending       = 5000
	maxPendingEvents = 50_000
	partEvents       = 10_000
)

// flush starts projecting and appending the pending transactions while
// decoding goes on; the slot may forget them once the append has
// committed (wait). One append is in flight at a time, so appends keep
// commit order.
func (s *session) flush(ctx context.Context) error {
	if err := s.wait(); err != nil {
		return err
	}
	if len(s.pending) == 0 {
		s.confirmed = max(s.confirmed, s.pendingEnd)
		s.pending, s.pendingEvents, s.pendingSince = nil, 0, time.Time{}
		return nil
	}
	batch, end := s.pending, s.pendingEnd
	s.pending, s.pendingEvents, s.pendingSince = nil, 0, time.Time{}
	done := make(chan error, 1)
	s.inflight, s.inflightEnd = done, end
	go func() { done <- s.append(ctx, batch, end) }()
	return nil
}

// wait waits for the append in flight, if any, and lets the slot forget
// what it appended.
func (s *session) wait() error {
	if s.inflight == nil {
		return nil
	}
	err := <-s.inflight
	if err == nil {
		s.confirmed = max(s.confirmed, s.inflightEnd)
	}
	s.inflight = nil
	return err
}

// done says, without waiting, whether no append is in flight (taking the
// result of one that has finished).
func (s *session) done() (bool, error) {
	if s.inflight == nil {
		return true, nil
	}
	select {
	case err := <-s.inflight:
		if err == nil {
			s.confirmed = max(s.confirmed, s.inflightEnd)
		}
		s.inflight = nil
		return true, err
	default:
		return false, nil
	}
}

// appendIfDone starts appending what is pending, if anything is and no
// append is in flight any more; it never waits.
func (s *session) appendIfDone(ctx context.Context) error {
	done, err := s.done()
	if err == nil && done && len(s.pending) > 0 {
		err = s.flush(ctx)
	}
	return err
}

// drain appends everything pending and waits for it: before the decoder
// uses the owner's connection or changes what the appender reads.
func (s *session) drain(ctx context.Context) error {
	if err := s.flush(ctx); err != nil {
		return err
	}
	return s.wait()
}

// append projects and appends a batch of transactions in one log
// transaction. It runs beside the decoder: it alone uses the owner's
// connection meanwhile, and the relations do not change under it (a
// relation message drains first).
func (s *session) append(ctx context.Context, batch []*transaction, end uint64) error {
	started := time.Now()
	tx, err := s.p.Log.Begin(ctx)
	if err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := s.write(ctx, tx, batch); err != nil {
		return err
	}
	if _, err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	s.p.Logger.Debug().Str("lsn", pglogrepl.LSN(end).String()).Int("transactions", len(batch)).
		Dur("took", time.Since(started)).Msg("transactions captured")
	return nil
}

// write projects transactions and appends them in tx.
func (s *session) write(ctx context.Context, tx eventlog.Tx, txns []*transaction) error {
	if err := s.fillUnchanged(ctx, tx, txns); err != nil {
		return err
	}
	groups, err := s.groups(ctx, txns)
	if err != nil {
		return err
	}
	if err := tx.Append(ctx, groups); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	// One metric update per version, not per group: a batch holds
	// thousands of single-row transactions.
	counts := map[eventlog.Version]int{}
	for _, g := range groups {
		counts[g.Version] += len(g.Changes)
	}
	for stream, n := range counts {
		metricCaptured.WithLabelValues(versionLabels(stream)...).Add(float64(n))
	}
	return nil
}

// part appends what the transaction being decoded did so far, in the log
// transaction that commits with it: a large source transaction never sits
// whole in memory.
func (s *session) part(ctx context.Context) error {
	if err := s.drain(ctx); err != nil { // commit order, and the owner's connection is ours
		return err
	}
	if s.open == nil {
		tx, err := s.p.Log.Begin(ctx)
		if err != nil {
			return fmt.Errorf("cannot append to the event log: %w", err)
		}
		s.open = tx
		s.p.Logger.Info().Str("system", s.p.System).Str("lsn", pglogrepl.LSN(s.txn.commitLSN).String()).
			Msg("large source transaction: appending it in parts")
	}
	if err := s.write(ctx, s.open, []*transaction{s.txn}); err != nil {
		return err
	}
	s.txn.parts++
	s.txn.events = nil
	return nil
}

// groups projects transactions for every source: one group per
// (transaction, version) that changed something.
func (s *session) groups(ctx context.Context, txns []*transaction) ([]eventlog.Group, error) {
	perTxn := make([][]eventlog.Group, len(txns))
	for i := range s.p.Sources {
		src := &s.p.Sources[i]
		since := s.since[src.Version]
		// The version's first state already has what committed before it.
		skip := func(t *transaction) bool { return t.commitLSN <= since }
		changes, err := changesFor(ctx, s.conn, src, s.rels, txns, skip)
		if err != nil {
			return nil, err
		}
		for ti, c := range changes {
			if len(c) > 0 {
				t := txns[ti]
				perTxn[ti] = append(perTxn[ti], eventlog.Group{Version: src.Version, System: s.p.System,
					CommitLSN: t.commitLSN, CommitTime: t.commitTime, Layout: src.Layout(), Changes: c})
			}
		}
	}
	var groups []eventlog.Group
	for _, g := range perTxn {
		groups = append(groups, g...) // commit order
	}
	return groups, nil
}

func (s *session) loop(ctx context.Context) error {
	interval := s.p.StatusInterval
	if interval <= 0 {
		interval = time.Second
	}
	next := time.Now().Add(interval)
	// Waits for the next message are bounded by a read deadline on the
	// connection, set only when it changes, rather than a context per
	// message (a context with a deadline, and pgx watching it, cost a
	// sixth of the capture's CPU at 50k transactions a second).
	conn := s.paced
	stopWaiting := context.AfterFunc(ctx, conn.Interrupt)
	defer stopWaiting()
	defer conn.Resume()
	var readDeadline time.Time
	for {
		// One clock reading per message: at 300,000 messages in a
		// catch-up, reading it three times cost a tenth of the capture.
		now := time.Now()
		if s.txn != nil {
			conn.Lag(now.Sub(s.txn.commitTime))
		}
		if now.After(next) {
			// Asking for a reply makes the server say how far it has
			// decoded, which an idle source may confirm at once.
			if err := s.flush(ctx); err != nil {
				return err
			}
			if err := s.status(ctx, s.txn == nil); err != nil {
				return err
			}
			next = time.Now().Add(interval)
		}
		if len(s.pending) > 0 && !s.pendingSince.IsZero() && now.Sub(s.pendingSince) >= maxPendingWait {
			// Due under a steady stream: appended as soon as the append
			// before it is done, checked at every message.
			if err := s.appendIfDone(ctx); err != nil {
				return err
			}
		}
		deadline := next
		if s.pendingEnd > s.confirmed {
			// Append what is pending as soon as the stream pauses, and
			// under a steady stream at least every maxPendingWait.
			if s.pendingSince.IsZero() {
				s.pendingSince = now
			}
			deadline = now.Add(pauseWait)
			if limit := s.pendingSince.Add(maxPendingWait); limit.Before(deadline) {
				deadline = limit
			}
			if s.inflight != nil && !deadline.After(now) {
				// Due, but the append before is still running: decode
				// on, and look again shortly.
				deadline = now.Add(appendPoll)
			}
			// To a quarter of a millisecond: the deadline moves with
			// every message otherwise.
			deadline = deadline.Truncate(250 * time.Microsecond).Add(250 * time.Microsecond)
		}
		if !deadline.Equal(readDeadline) {
			if err := conn.SetDeadline(deadline); err != nil {
				return err
			}
			readDeadline = deadline
		}
		msg, err := s.repl.ReceiveMessage(context.Background())
		if ctx.Err() != nil {
			conn.Resume()
			s.stop(ctx)
			return ctx.Err()
		}
		if timedOut(err) {
			conn.Lag(0) // a pause: whatever comes next is new
			// Append what is pending once the append before it is done;
			// until then decoding goes on (the batch grows, up to
			// maxPending, where commit waits).
			if err := s.appendIfDone(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := s.handle(ctx, msg); err != nil {
			return err
		}
	}
}

// timedOut says whether err is a read that reached its deadline: the
// connection is still good.
func timedOut(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// stop ends the session at a clean point: what is pending is appended and
// confirmed (a large transaction being appended in parts is left to be
// replayed).
func (s *session) stop(ctx context.Context) {
	fin, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.drain(fin); err != nil {
		s.p.Logger.Warn().Err(err).Msg("capture stopped without appending what was pending; it is replayed at the next start")
		return
	}
	if err := s.status(fin, false); err == nil {
		s.p.Logger.Info().Str("system", s.p.System).Str("confirmed", pglogrepl.LSN(s.confirmed).String()).Msg("capture stopped")
	}
}

func (s *session) handle(ctx context.Context, msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		return pgconn.ErrorResponseToPgError(m)
	case *pgproto3.CopyData:
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return err
			}
			s.serverEnd = max(s.serverEnd, uint64(ka.ServerWALEnd))
			if s.txn == nil && s.pendingEnd <= s.confirmed {
				s.received = max(s.received, uint64(ka.ServerWALEnd))
			}
			if ka.ReplyRequested {
				return s.status(ctx, false)
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return err
			}
			s.serverEnd = max(s.serverEnd, uint64(xld.ServerWALEnd))
			return s.decode(ctx, xld.WALData)
		}
	}
	return nil
}

// status tells the slot how far it may forget: the end of the last
// transaction appended, or — with nothing in flight — the server's WAL
// end, so an idle source never makes the server keep WAL.
func (s *session) status(ctx context.Context, reply bool) error {
	pos := pglogrepl.LSN(max(s.confirmed, s.received))
	slot := SlotName(s.p.System)
	metricCaptureLagBytes.WithLabelValues(slot).Set(float64(max(s.serverEnd, uint64(pos)) - uint64(pos)))
	lag := 0.0
	if len(s.pending) > 0 {
		lag = time.Since(s.pending[0].commitTime).Seconds()
	} else if s.txn != nil && s.txn.parts > 0 {
		lag = time.Since(s.txn.commitTime).Seconds()
	}
	metricCaptureLagSeconds.WithLabelValues(slot).Set(lag)
	return pglogrepl.SendStandbyStatusUpdate(ctx, s.repl, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: reply})
}

func (s *session) decode(ctx context.Context, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		// What was decoded before is projected with the columns it had.
		if err := s.drain(ctx); err != nil {
			return err
		}
		if s.txn != nil && len(s.txn.events) > 0 {
			if err := s.part(ctx); err != nil {
				return err
			}
		}
		return s.relation(ctx, m)
	case *pglogrepl.BeginMessage:
		s.txn = &transaction{commitLSN: uint64(m.FinalLSN), commitTime: m.CommitTime}
	case *pglogrepl.InsertMessage:
		vals, toasted := tupleValues(m.Tuple)
		return s.add(ctx, event{op: 'I', rel: m.RelationID, new: vals, toasted: toasted})
	case *pglogrepl.UpdateMessage:
		old, _ := tupleValues(m.OldTuple)
		vals, toasted := tupleValues(m.NewTuple)
		for i, t := range toasted {
			// With REPLICA IDENTITY FULL the old tuple has the value.
			if t && i < len(old) && old[i] != nil {
				vals[i], toasted[i] = old[i], false
			}
		}
		return s.add(ctx, event{op: 'U', rel: m.RelationID, old: old, new: vals, toasted: toasted})
	case *pglogrepl.DeleteMessage:
		old, _ := tupleValues(m.OldTuple)
		return s.add(ctx, event{op: 'D', rel: m.RelationID, old: old})
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := s.add(ctx, event{op: 'T', rel: id}); err != nil {
				return err
			}
		}
	case *pglogrepl.CommitMessage:
		return s.commit(ctx, m)
	}
	return nil
}

func (s *session) add(ctx context.Context, e event) error {
	if s.txn == nil {
		return nil
	}
	s.txn.events = append(s.txn.events, e)
	if len(s.txn.events) >= partEvents {
		return s.part(ctx)
	}
	return nil
}

// relation records a table's columns with their exact type names, which
// form its replica identity, and which may be stored out of line.
func (s *session) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	r := &relation{schema: m.Namespace, table: m.RelationName}
	oids, mods := make([]uint32, len(m.Columns)), make([]int32, len(m.Columns))
	names := make([]string, len(m.Columns))
	for i, c := range m.Columns {
		oids[i], mods[i], names[i] = c.DataType, c.TypeModifier, c.Name
		r.key = append(r.key, c.Flags&1 != 0)
	}
	rows, err := s.conn.Query(ctx, `SELECT pg_catalog.format_type(u.oid, u.mod), coalesce(t.typlen = -1, true)
		FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(oid, mod, o)
		LEFT JOIN pg_catalog.pg_type t ON t.oid = u.oid ORDER BY u.o`, oids, mods)
	if err != nil {
		return err
	}
	var typ string
	var varlena bool
	i := 0
	_, err = pgx.ForEachRow(rows, []any{&typ, &varlena}, func() error {
		r.cols = append(r.cols, SourceColumn{Name: names[i], Type: typ})
		r.varlena = append(r.varlena, varlena)
		i++
		return nil
	})
	if err != nil {
		return err
	}
	r.kept = keepColumns(s.p.Sources, r.schema, r.table, names, r.key, r.varlena)
	s.rels[m.RelationID] = r
	return nil
}

// commit queues a decoded transaction; it is projected and appended with
// the others pending when the stream pauses or enough are queued. A
// transaction appended in parts commits its log transaction now.
func (s *session) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	txn := s.txn
	s.txn = nil
	if txn == nil {
		return nil
	}
	txn.commitLSN, txn.endLSN, txn.commitTime = uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime
	if s.open != nil {
		if err := s.wait(); err != nil {
			return err
		}
		tx := s.open
		if len(txn.events) > 0 {
			if err := s.write(ctx, tx, []*transaction{txn}); err != nil {
				return err
			}
		}
		if _, err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("cannot append to the event log: %w", err)
		}
		s.open = nil
		s.p.Logger.Info().Str("system", s.p.System).Str("lsn", pglogrepl.LSN(txn.commitLSN).String()).
			Int("parts", txn.parts+1).Msg("large source transaction captured")
		s.pendingEnd = max(s.pendingEnd, txn.endLSN)
		s.confirmed = max(s.confirmed, txn.endLSN)
		return nil
	}
	if len(txn.events) > 0 {
		s.pending = append(s.pending, txn)
		s.pendingEvents += len(txn.events)
	}
	s.pendingEnd = txn.endLSN
	if len(s.pending) >= maxPending || s.pendingEvents >= maxPendingEvents {
		return s.flush(ctx)
	}
	return nil
}
