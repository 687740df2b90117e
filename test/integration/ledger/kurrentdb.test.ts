/**
 * The EventStore contract against a KurrentDB server, when one is named by KURRENTDB_URL (e.g.
 * kurrentdb://127.0.0.1:2113?tls=false). No KurrentDB server can run on this project's CI
 * machines, so without the variable the suite is reported as skipped with that reason. Each test's
 * store gets its own stream namespace, so a server that already holds events is fine.
 */
import { describe, expect, it } from "vitest";
import { LedgerOpenError } from "../../../src/ledger/index.js";
import { getKurrentDbEventStore } from "../../../src/ledger/kurrentdb/kurrentDbEventStore.js";
import { eventStoreContract } from "../../unit/ledger/eventStoreContract.js";

const url = process.env.KURRENTDB_URL;
const reason = "KURRENTDB_URL is not set: the KurrentDB contract suite needs a throwaway KurrentDB server and none runs on these machines";

if (url) {
  const run = `t${Date.now().toString(36)}`;
  let n = 0;
  eventStoreContract("kurrentdb", () => getKurrentDbEventStore({ url, namespace: `${run}-${++n}` }));
} else {
  console.warn(`KurrentDB ledger tests NOT RUN: ${reason}`);
  describe("EventStore contract: kurrentdb", () => {
    it.skip(`not run: ${reason}`, () => undefined);
  });
}

describe("KurrentDB ledger opening (no server needed)", () => {
  it("fails at open, naming the server without its password", async () => {
    const err = await getKurrentDbEventStore({ url: "kurrentdb://admin:s3cret@127.0.0.1:1?tls=false" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LedgerOpenError);
    expect((err as Error).message).toContain("kurrentdb://admin:***@127.0.0.1:1");
    expect((err as Error).message).not.toContain("s3cret");
  });
});
