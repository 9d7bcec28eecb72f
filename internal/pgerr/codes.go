package pgerr

// The SQLSTATEs the sidecar raises or matches, named as in Postgres's
// errcodes.txt.
const (
	// Class 08: connection exception
	ConnectionFailure = "08006"
	ProtocolViolation = "08P01"

	// Class 0A: feature not supported
	FeatureNotSupported = "0A000"

	// Class 22: data exception
	InvalidParameterValue       = "22023"
	InvalidTextRepresentation   = "22P02"
	InvalidBinaryRepresentation = "22P03"

	// Class 23: integrity constraint violation
	UniqueViolation = "23505"

	// Class 25: invalid transaction state
	InFailedSQLTransaction = "25P02"

	// Class 28: invalid authorization specification
	InvalidAuthorizationSpecification = "28000"

	// Class 3D and 3F: invalid catalog (database) and schema name
	InvalidCatalogName = "3D000"
	InvalidSchemaName  = "3F000"

	// Class 42: syntax error or access rule violation
	InsufficientPrivilege      = "42501"
	SyntaxError                = "42601"
	DuplicateColumn            = "42701"
	UndefinedColumn            = "42703"
	UndefinedObject            = "42704"
	DuplicateObject            = "42710"
	DuplicateAlias             = "42712"
	WrongObjectType            = "42809"
	UndefinedFunction          = "42883"
	UndefinedTable             = "42P01"
	UndefinedParameter         = "42P02"
	DuplicateDatabase          = "42P04"
	DuplicatePreparedStatement = "42P05"
	InvalidColumnReference     = "42P10"
	InvalidTableDefinition     = "42P16"
	InvalidObjectDefinition    = "42P17"
	IndeterminateDatatype      = "42P18"

	// Class 54: program limit exceeded
	ProgramLimitExceeded = "54000"

	// Class 55: object not in prerequisite state
	ObjectNotInPrerequisiteState = "55000"
	ObjectInUse                  = "55006"

	// Class 57: operator intervention
	QueryCanceled    = "57014"
	AdminShutdown    = "57P01"
	CannotConnectNow = "57P03"

	// Class XX: internal error
	InternalError = "XX000"
)

// Classes, the first two characters of a SQLSTATE, for matching a whole
// kind of error.
const (
	ClassDataException                = "22"
	ClassIntegrityConstraintViolation = "23"
)
