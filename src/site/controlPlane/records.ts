import * as grpc from "@grpc/grpc-js";
import type {
  AddAuthorizationRequest,
  AppendRunbookEventsRequest,
  AppendRunbookEventsResponse,
  AuthorizationsResponse,
  LedgerEvent,
  ReadRunbookRunRequest,
  ReadRunbookRunResponse,
  RemoveAuthorizationRequest,
} from "../../gen/qreplica/v1/control.js";
import { isWrongExpectedVersionError, type ExpectedVersion, type RecordedEvent } from "../../ledger/index.js";
import { EVENT as RUNBOOK_EVENT, runStream } from "../../runbook/runLog.js";
import type { AuthorizationEntry } from "../authorizations.js";
import type { SiteContext } from "../siteContext.js";
import { actorMetadata, type Caller } from "./caller.js";

/** A ledger event as the control plane returns it, with the caller that caused it. */
export function toLedgerEvent(e: RecordedEvent): LedgerEvent {
  return {
    eventId: `${e.stream}@${e.version}`,
    stream: e.stream,
    streamVersion: e.version,
    globalPosition: e.globalPosition,
    type: e.type,
    recordedAt: e.recordedAt,
    dataJson: JSON.stringify(e.data),
    actor: typeof e.metadata.actor === "string" ? e.metadata.actor : "",
    actorRole: typeof e.metadata.actorRole === "string" ? e.metadata.actorRole : "",
  };
}

const invalid = (message: string) => Object.assign(new Error(message), { grpcCode: grpc.status.INVALID_ARGUMENT });

function toWireEntries(entries: AuthorizationEntry[]): AuthorizationsResponse {
  return { entries: entries.map((e) => ({ primaryIdentity: e.primaryIdentity, addedBy: e.addedBy, addedAt: new Date(e.addedAt) })) };
}

export async function listAuthorizations(ctx: SiteContext): Promise<AuthorizationsResponse> {
  return toWireEntries(await ctx.authorizations.list());
}

export async function addAuthorization(ctx: SiteContext, req: AddAuthorizationRequest, caller: Caller): Promise<AuthorizationsResponse> {
  return toWireEntries(await ctx.authorizations.add(req.primaryIdentity, caller));
}

export async function removeAuthorization(ctx: SiteContext, req: RemoveAuthorizationRequest, caller: Caller): Promise<AuthorizationsResponse> {
  return toWireEntries(await ctx.authorizations.remove(req.primaryIdentity, caller));
}

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const RUNBOOK_TYPES = new Set<string>(Object.values(RUNBOOK_EVENT));

function checkRunId(runId: string): void {
  if (!RUN_ID.test(runId)) throw invalid(`'${runId}' is not a runbook run id (letters, digits, '.', '_' and '-', as 'qreplica runbook run' prints them)`);
}

function expectedOf(v: bigint): ExpectedVersion {
  if (v === -1n) return "no_stream";
  if (v === -2n) return "any";
  if (v < 0n) throw invalid(`expected_version ${v}: use -1 (new run), -2 (any) or the last version read`);
  return v;
}

/**
 * Runbook records go only to `runbook-<runId>` streams and only as runbook events: an operator
 * recording a run cannot write into a relationship's or the authorization entries' stream.
 */
export async function appendRunbookEvents(ctx: SiteContext, req: AppendRunbookEventsRequest, caller: Caller): Promise<AppendRunbookEventsResponse> {
  checkRunId(req.runId);
  if (req.events.length === 0) throw invalid("no events to append");
  const events = req.events.map((e) => {
    if (!RUNBOOK_TYPES.has(e.type)) throw invalid(`'${e.type}' is not a runbook event (expected one of ${[...RUNBOOK_TYPES].join(", ")})`);
    let data: unknown;
    try {
      data = JSON.parse(e.dataJson);
    } catch {
      throw invalid(`event ${e.type}: data_json is not JSON`);
    }
    if (typeof data !== "object" || data === null || Array.isArray(data)) throw invalid(`event ${e.type}: data_json must be a JSON object`);
    return { type: e.type, data: data as Record<string, unknown>, metadata: actorMetadata(caller) };
  });
  try {
    const r = await ctx.store.append(runStream(req.runId), events, expectedOf(req.expectedVersion));
    return { nextExpectedVersion: r.nextExpectedVersion };
  } catch (err) {
    if (isWrongExpectedVersionError(err)) {
      throw Object.assign(
        new Error(`run ${req.runId} was changed by someone else meanwhile (${err.message}); read it again ('qreplica runbook show ${req.runId}') before going on`),
        {
          grpcCode: grpc.status.ABORTED,
        },
      );
    }
    throw err;
  }
}

export async function readRunbookRun(ctx: SiteContext, req: ReadRunbookRunRequest): Promise<ReadRunbookRunResponse> {
  checkRunId(req.runId);
  return { events: (await ctx.store.readStream(runStream(req.runId))).map(toLedgerEvent) };
}
