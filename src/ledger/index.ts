/** Public surface of the ledger's storage layer. Import from here, not from the files behind it. */
export {
  ANY,
  NO_STREAM,
  STREAM_EXISTS,
  type AppendResult,
  type EventHandler,
  type EventStore,
  type ExpectedVersion,
  type NewEvent,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type SubscribeOptions,
  type Subscription,
} from "./eventStore.js";
export {
  LedgerArgumentError,
  LedgerClosedError,
  LedgerCorruptError,
  LedgerIntegrityError,
  LedgerOpenError,
  WrongExpectedVersionError,
  isWrongExpectedVersionError,
  type ActualVersion,
  type LedgerProblem,
} from "./errors.js";
export { GENESIS_HASH, canonicalJson, computeEventHash, type HashInput, type VerifyReport } from "./hashChain.js";
export {
  SNAPSHOT_SCHEMA_VERSION,
  openSnapshot,
  sealSnapshot,
  type OpenedSnapshot,
  type SnapshotRecord,
  type SnapshotStore,
} from "./snapshots.js";
export { assertLedgerIntact, verifyLedger, type VerifiableLedger } from "./verify.js";
export { getInMemoryEventStore, type InMemoryEventStoreOptions } from "./memory/inMemoryEventStore.js";
export { getSqliteEventStore, type SqliteEventStore, type SqliteEventStoreOptions } from "./sqlite/sqliteEventStore.js";
export { LEDGER_SCHEMA_VERSION } from "./sqlite/schema.js";
export * from "./domain/index.js";
export * from "./projections/index.js";
