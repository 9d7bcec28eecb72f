package managed

// Kinds of the outbox's commands: the rejot call each records. The sidecar
// writes them in the caller's transaction and the catalog applies them.
const (
	KindPublish     = "publish"     // payload Published
	KindUnpublish   = "unpublish"   // payload Lifecycle
	KindDeprecate   = "deprecate"   // payload Lifecycle
	KindSubscribe   = "subscribe"   // payload SubscriptionCommand
	KindUnsubscribe = "unsubscribe" // payload SubscriptionCommand
	KindResync      = "resync"      // payload SubscriptionCommand
	KindGrant       = "grant"       // payload Access
	KindRevoke      = "revoke"      // payload Access
)

// NOTIFY channels of a managed database, each notified in the transaction
// that records what it announces, so a listener wakes when it commits.
const (
	// ChannelCommands carries the id of each new command: the outbox
	// applier wakes and applies it to the catalog.
	ChannelCommands = "rejot_commands"
	// ChannelSubscriptions carries the target of a subscription that was
	// made, removed or resynced: the subscriber reconciles its workers.
	ChannelSubscriptions = "rejot_subscriptions"
)

// Published is the payload of a publish command: a publication version as
// its owner recorded it.
type Published struct {
	Publication string `json:"publication"`
	Version     int    `json:"version"`
	Minor       int    `json:"minor"`
	Owner       string `json:"owner"`
	Database    string `json:"database"`
	Query       string `json:"query"`
	Source      string `json:"source"`
	// Tables are every table the version reads, the root (Source) first;
	// empty in a command of a release before join projections: Source
	// alone.
	Tables      []string `json:"tables,omitempty"`
	KeyColumns  []string `json:"key_columns"`
	Columns     []Column `json:"columns"`
	Description string   `json:"description"`
	// Caller is the role that recorded it (set by _rejot, not the caller).
	Caller string `json:"caller,omitempty"`
}

// Column is a public column of a publication version, as the owner
// records it (in the publish payload and in _rejot.publications.columns)
// and the catalog keeps it.
type Column struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	TypeOID    uint32 `json:"type_oid"`
	TypeMod    int32  `json:"type_mod"`
	IsKey      bool   `json:"is_key"`
	Nullable   bool   `json:"nullable"`
	SinceMinor int    `json:"since_minor"`
}

// Lifecycle is the payload of unpublish and deprecate commands.
type Lifecycle struct {
	Publication string `json:"publication"`
	Version     int    `json:"version"`
	Status      string `json:"status"`
	Sunset      string `json:"sunset,omitempty"`
	Note        string `json:"note,omitempty"`
	Caller      string `json:"caller,omitempty"` // the role that recorded it
}

// SubscriptionCommand is the payload of subscribe, unsubscribe and resync
// commands.
type SubscriptionCommand struct {
	Target      string `json:"target"`
	Publication string `json:"publication"`
	Version     int    `json:"version"`
	Caller      string `json:"caller,omitempty"` // the role that recorded it
	// Mapped: the subscription runs the consumer's own statements
	// (migration 012), set on subscribe commands.
	Mapped bool `json:"mapped,omitempty"`
}

// SubscribedColumn is a column of a subscription's target, as recorded in
// _rejot.subscriptions.columns: Index is its place in the version's rows.
type SubscribedColumn struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Key   bool   `json:"key"`
	Index int    `json:"index"`
	// Adding: a later subscribe asked for the column; the apply adds it
	// to the table and fills it, then clears the mark (migration 010).
	Adding bool `json:"adding,omitempty"`
}

// Access is the payload of grant and revoke commands: who may subscribe
// to a version after the change, whole, so that applying it sets exactly
// that. Restricted false: every system may (Granted is then empty).
type Access struct {
	Publication string   `json:"publication"`
	Version     int      `json:"version"`
	System      string   `json:"system"` // the system granted or revoked ('*': every system)
	Restricted  bool     `json:"restricted"`
	Granted     []string `json:"granted"`
	Caller      string   `json:"caller,omitempty"` // the role that recorded it
}
