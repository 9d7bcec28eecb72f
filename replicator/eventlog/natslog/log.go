// Package natslog is the event log kept in NATS JetStream, for
// organisations whose published data outgrows one Postgres server. Per
// publication version a replicated stream holds the change log (each
// append one run of messages ended by a marker, fenced by an expected
// last sequence and de-duplicated by (system, commit LSN)), and a stream
// per state generation holds the compacted state (one message per key).
// docs/natslog.md has the layout and the reasons.
//
// The files follow the log's concerns: log.go opens the log and names its
// streams; codec.go encodes changes and rows; append.go appends runs;
// fill.go records first states; state.go compacts the state; copy.go
// copies it; read.go serves the changes; prune.go the readers' positions
// and the changes they let go; notify.go the wake-ups; kept.go the kept
// out-of-line (TOAST) values; base.go, base_get.go and base_list.go the
// base states of join versions.
package natslog

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Log is an open event log in JetStream.
type Log struct {
	nc *nats.Conn
	js jetstream.JetStream
	// The compaction writes the state on a connection of its own, so
	// that appends never queue behind its messages.
	bgnc       *nats.Conn
	bgjs       jetstream.JetStream
	replicas   int
	chunk      int  // body bytes per message
	background pass // how the compactors go (pace.go)

	readers jetstream.KeyValue
	filled  jetstream.KeyValue
	kept    jetstream.KeyValue

	ctx    context.Context // ends when the log closes
	cancel context.CancelFunc
	bg     sync.WaitGroup

	mu       sync.Mutex
	known    map[eventlog.Version]*known // what appends learned
	streams  map[string]jetstream.Stream // change streams made or seen
	waiters  map[eventlog.Version]*waiter
	compacts map[eventlog.Version]*compactor
	cursors  map[eventlog.Version]cursor // where reads of a version ended
}

var _ eventlog.Log = (*Log)(nil)

// Open connects to JetStream at url (nats://host:port[,host:port…], with
// the options of Options in its query) and makes the log's buckets.
func Open(ctx context.Context, rawURL string) (*Log, error) {
	servers, o, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	opts, err := o.natsOptions()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(servers, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the NATS event log: %w", err)
	}
	bg, err := nats.Connect(servers, opts...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot connect to the NATS event log: %w", err)
	}
	l, err := open(ctx, nc, o)
	if err == nil {
		l.bgnc = bg
		l.bgjs, err = jetstream.New(bg, jetstream.WithPublishAsyncMaxPending(4096))
	}
	if err != nil {
		nc.Close()
		bg.Close()
		return nil, err
	}
	return l, nil
}

func open(ctx context.Context, nc *nats.Conn, o Options) (*Log, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, err
	}
	replicas := o.Replicas
	if replicas == 0 {
		replicas = 1
		if len(nc.Servers()) >= 3 {
			replicas = 3 // a cluster: each stream survives a node
		}
	}
	l := &Log{nc: nc, js: js, replicas: replicas, known: map[eventlog.Version]*known{},
		streams: map[string]jetstream.Stream{}, waiters: map[eventlog.Version]*waiter{}, compacts: map[eventlog.Version]*compactor{},
		cursors: map[eventlog.Version]cursor{}}
	l.chunk = int(min(nc.MaxPayload()/2, 512<<10))
	l.background = backgroundPass
	for _, b := range []struct {
		kv   *jetstream.KeyValue
		name string
	}{{&l.readers, "REJOT_READERS"}, {&l.filled, "REJOT_FILLED"}, {&l.kept, "REJOT_KEPT"}} {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b.name, Replicas: replicas, Storage: jetstream.FileStorage})
		if err != nil {
			return nil, fmt.Errorf("cannot make the event log's bucket %s: %w", b.name, err)
		}
		*b.kv = kv
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l, nil
}

// Options are what the log's URL may say besides its servers.
type Options struct {
	Replicas int    // of every stream: default 3 on a cluster of 3 or more, else 1
	Creds    string // a credentials file (JWT and seed)
	NKey     string // an nkey seed file
	CA       string // TLS: the servers' CA
	Cert     string // TLS: the client's certificate and key
	Key      string
}

// ParseURL splits a log URL into the servers nats.Connect takes (user,
// password or token inside them, tls:// for TLS) and the options of its
// query: replicas, creds, nkey, tls_ca, tls_cert, tls_key.
func ParseURL(raw string) (string, Options, error) {
	var o Options
	servers, query, _ := strings.Cut(raw, "?")
	if !strings.HasPrefix(servers, "nats://") && !strings.HasPrefix(servers, "tls://") {
		return "", o, fmt.Errorf("invalid NATS log URL %q: it starts with nats:// or tls://", redact(servers))
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", o, fmt.Errorf("invalid NATS log URL options: %w", err)
	}
	for k, vs := range q {
		val := vs[len(vs)-1]
		switch k {
		case "replicas":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 5 {
				return "", o, fmt.Errorf("invalid replicas=%q in the NATS log URL: a number from 1 to 5", val)
			}
			o.Replicas = n
		case "creds":
			o.Creds = val
		case "nkey":
			o.NKey = val
		case "tls_ca":
			o.CA = val
		case "tls_cert":
			o.Cert = val
		case "tls_key":
			o.Key = val
		default:
			return "", o, fmt.Errorf("unknown option %q in the NATS log URL (replicas, creds, nkey, tls_ca, tls_cert, tls_key)", k)
		}
	}
	// Every host after the first inherits the scheme: nats://a:4222,b:4222.
	scheme, hosts, _ := strings.Cut(servers, "://")
	parts := strings.Split(hosts, ",")
	for i, h := range parts {
		if !strings.Contains(h, "://") {
			parts[i] = scheme + "://" + h
		}
	}
	return strings.Join(parts, ","), o, nil
}

func redact(s string) string {
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			return s[:i+3] + "…@" + s[at+1:]
		}
	}
	return s
}

func (o Options) natsOptions() ([]nats.Option, error) {
	opts := []nats.Option{nats.Name("rejot"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return nil, fmt.Errorf("cannot read the nkey seed %s: %w", o.NKey, err)
		}
		opts = append(opts, opt)
	}
	if o.CA != "" || o.Cert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CA != "" {
			pem, err := os.ReadFile(o.CA)
			if err != nil {
				return nil, fmt.Errorf("cannot read tls_ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls_ca %s holds no certificate", o.CA)
			}
		}
		if o.Cert != "" {
			cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
			if err != nil {
				return nil, fmt.Errorf("cannot read tls_cert and tls_key: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}

// Close stops the log's consumers and closes its connection.
func (l *Log) Close() {
	l.cancel()
	l.bg.Wait()
	l.mu.Lock()
	for _, w := range l.waiters {
		if w.cc != nil {
			w.cc.Stop()
		}
	}
	l.mu.Unlock()
	l.nc.Close()
	l.bgnc.Close()
}

// Ping checks that JetStream answers.
func (l *Log) Ping(ctx context.Context) error {
	ctx, cancel := request(ctx)
	defer cancel()
	_, err := l.js.AccountInfo(ctx)
	return err
}

// Stream and subject names. A publication's name may hold any character,
// so it is hex-encoded into one token.
func versionToken(v eventlog.Version) string {
	return hex.EncodeToString([]byte(v.Publication)) + "_" + strconv.Itoa(v.Number)
}

func changeStream(v eventlog.Version) string { return "REJOT_LOG_" + versionToken(v) }
func chunkSubject(v eventlog.Version) string { return "rejot.log." + versionToken(v) + ".c" }
func runSubject(v eventlog.Version) string   { return "rejot.log." + versionToken(v) + ".m" }

func stateStream(v eventlog.Version, gen int) string {
	return stateStreamPrefix(v) + strconv.Itoa(gen)
}
func stateStreamPrefix(v eventlog.Version) string { return "REJOT_STATE_" + versionToken(v) + "_" }
func stateSubjects(v eventlog.Version, gen int) string {
	return "rejot.state." + versionToken(v) + "." + strconv.Itoa(gen)
}

// ensureChangeStream makes a version's change stream if it is missing
// (and its first state generation's stream with it).
func (l *Log) ensureChangeStream(ctx context.Context, v eventlog.Version) (jetstream.Stream, error) {
	return l.ensureStream(ctx, v, "change", jetstream.StreamConfig{
		Name: changeStream(v), Subjects: []string{chunkSubject(v), runSubject(v)},
		Discard: jetstream.DiscardOld, Duplicates: 2 * time.Minute,
		Description: fmt.Sprintf("rejot change log of %s version %d", v.Publication, v.Number),
	}, func() error {
		_, err := l.ensureStateStream(ctx, v, 1)
		return err
	})
}

// ensureStateStream makes a state generation's stream if it is missing.
func (l *Log) ensureStateStream(ctx context.Context, v eventlog.Version, gen int) (jetstream.Stream, error) {
	name := stateStream(v, gen)
	s := l.cachedStream(name)
	if s != nil {
		return s, nil
	}
	// Opened as it is when it exists: an update would drop the metadata
	// a first state's stream was made with (newStateStream).
	rctx, cancel := request(ctx)
	s, err := l.js.Stream(rctx, name)
	cancel()
	switch {
	case err == nil:
		if err := waitLeader(ctx, s); err != nil {
			return nil, err
		}
		l.rememberStream(name, s)
		return s, nil
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("cannot open the state stream of %s version %d: %w", v.Publication, v.Number, err)
	case gen != 1:
		// Only a first state makes a later generation's stream
		// (newStateStream): made here, empty, it would hide that the
		// version's state is gone.
		return nil, fmt.Errorf("the state stream %s of %s version %d is gone (deleted outside ReJot?): new subscribers cannot copy the version until it has a new first state (publish a new version)",
			name, v.Publication, v.Number)
	}
	return l.ensureStream(ctx, v, "state", stateStreamConfig(v, gen), nil)
}

// newStateStream makes a first state's stream, new (a stream of that name
// already there is jetstream.ErrStreamNameAlreadyInUse: another first
// state drew the same generation), recording the change stream's last
// sequence the first state was started after (metaAfter): whether its run
// can still commit (dropStates).
func (l *Log) newStateStream(ctx context.Context, v eventlog.Version, gen int, after uint64) (jetstream.Stream, error) {
	cfg := stateStreamConfig(v, gen)
	nonce := make([]byte, 8)
	rand.Read(nonce)
	// The nonce makes every first state's configuration its own: creating
	// a stream of the same configuration again succeeds.
	cfg.Metadata = map[string]string{metaAfter: strconv.FormatUint(after, 10), metaFill: hex.EncodeToString(nonce)}
	l.place(&cfg)
	rctx, cancel := request(ctx)
	s, err := l.js.CreateStream(rctx, cfg)
	cancel()
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("cannot make the state stream of %s version %d: %w", v.Publication, v.Number, err)
	}
	if err := waitLeader(ctx, s); err != nil {
		return nil, err
	}
	l.rememberStream(cfg.Name, s)
	return s, nil
}

const (
	// metaAfter is the metadata key of a first state's stream that holds
	// the change stream's last sequence when the first state started.
	metaAfter = "rejot_after"
	// metaFill is a first state's own random token.
	metaFill = "rejot_fill"
)

func stateStreamConfig(v eventlog.Version, gen int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name: stateStream(v, gen), Subjects: []string{stateSubjects(v, gen) + ".>"},
		MaxMsgsPerSubject: 1, AllowMsgTTL: true, Discard: jetstream.DiscardOld,
		Description: fmt.Sprintf("rejot compacted state of %s version %d", v.Publication, v.Number),
	}
}

// ensureStream makes the stream cfg names, file-stored with the log's
// replicas and limits retention, if this log has not seen it yet, waits
// for its leader, then runs also (if any) before remembering it.
func (l *Log) ensureStream(ctx context.Context, v eventlog.Version, what string, cfg jetstream.StreamConfig, also func() error) (jetstream.Stream, error) {
	s := l.cachedStream(cfg.Name)
	if s != nil {
		return s, nil
	}
	l.place(&cfg)
	rctx, cancel := request(ctx)
	defer cancel()
	s, err := l.js.CreateOrUpdateStream(rctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot make the %s stream of %s version %d: %w", what, v.Publication, v.Number, err)
	}
	if err := waitLeader(ctx, s); err != nil {
		return nil, err
	}
	if also != nil {
		if err := also(); err != nil {
			return nil, err
		}
	}
	l.rememberStream(cfg.Name, s)
	return s, nil
}

// place makes a stream file-stored, with the log's replicas and limits
// retention.
func (l *Log) place(cfg *jetstream.StreamConfig) {
	cfg.Storage, cfg.Replicas, cfg.Retention = jetstream.FileStorage, l.replicas, jetstream.LimitsPolicy
}

// cachedStream is the stream name this log has opened or made, if any.
func (l *Log) cachedStream(name string) jetstream.Stream {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[name]
}

func (l *Log) rememberStream(name string, s jetstream.Stream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.streams[name] = s
}

// changeStreamOf opens a version's change stream; ok is false when it
// does not exist yet.
func (l *Log) changeStreamOf(ctx context.Context, v eventlog.Version) (jetstream.Stream, bool, error) {
	name := changeStream(v)
	s := l.cachedStream(name)
	if s != nil {
		return s, true, nil
	}
	rctx, cancel := request(ctx)
	defer cancel()
	s, err := l.js.Stream(rctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, false, nil
	}
	if err == nil {
		err = waitLeader(ctx, s) // made a moment ago by an appender
	}
	if err != nil {
		return nil, false, err
	}
	l.rememberStream(name, s)
	return s, true, nil
}

// waitLeader waits until a new stream's replicas have elected a leader:
// until then JetStream leaves requests to it unanswered.
func waitLeader(ctx context.Context, s jetstream.Stream) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := streamInfo(ctx, s)
		if err == nil && (info.Cluster == nil || info.Cluster.Leader != "") {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no leader elected")
			}
			return fmt.Errorf("stream %s is not ready: %w", s.CachedInfo().Config.Name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deleteStream removes a stream (missing is fine) and forgets its handle.
func (l *Log) deleteStream(ctx context.Context, name string) error {
	ctx, cancel := request(ctx)
	defer cancel()
	l.mu.Lock()
	delete(l.streams, name)
	l.mu.Unlock()
	err := l.js.DeleteStream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	return err
}
