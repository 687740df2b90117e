import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../src/common/logger.js";
import { getInMemoryEventStore } from "../../../src/ledger/index.js";
import {
  AUTHORIZATIONS_STREAM,
  AuthorizationInvalidError,
  AuthorizationNotFoundError,
  AuthorizationWildcardError,
  SiteAuthorizations,
  importLegacyAuthorizations,
} from "../../../src/site/authorizations.js";
import { authorizationsFile } from "../../../src/site/siteConfig.js";

const ada = { identity: "ada", role: "admin" as const };

describe("authorization entries in the ledger", () => {
  it("adds (idempotently) and removes, each change an event naming its actor", async () => {
    const store = getInMemoryEventStore();
    const authz = new SiteAuthorizations(store);
    expect((await authz.add("agent-a", ada)).map((e) => e.primaryIdentity)).toEqual(["agent-a"]);
    await authz.add("agent-a", ada);
    await authz.add("agent-b", ada);
    expect((await authz.remove("agent-a", ada)).map((e) => e.primaryIdentity)).toEqual(["agent-b"]);
    const events = await store.readStream(AUTHORIZATIONS_STREAM);
    expect(events.map((e) => [e.type, e.data.primaryIdentity, e.metadata.actor, e.metadata.actorRole])).toEqual([
      ["AuthorizationAdded", "agent-a", "ada", "admin"],
      ["AuthorizationAdded", "agent-b", "ada", "admin"],
      ["AuthorizationRemoved", "agent-a", "ada", "admin"],
    ]);
    await expect(authz.remove("agent-a", ada)).rejects.toBeInstanceOf(AuthorizationNotFoundError);
  });

  it("refuses wildcards and names no certificate could carry", async () => {
    const authz = new SiteAuthorizations(getInMemoryEventStore());
    for (const w of ["*", "agent-*", "a?"]) await expect(authz.add(w, ada)).rejects.toBeInstanceOf(AuthorizationWildcardError);
    for (const bad of ["", "a b", "../x"]) await expect(authz.add(bad, ada)).rejects.toBeInstanceOf(AuthorizationInvalidError);
    expect(await authz.list()).toEqual([]);
  });

  it("sees a change made by another writer of the same ledger at the next read (the cache follows the stream's version)", async () => {
    const store = getInMemoryEventStore();
    const site = new SiteAuthorizations(store);
    const cli = new SiteAuthorizations(store);
    expect(await site.find("agent-a")).toBeUndefined();
    await cli.add("agent-a", { identity: "local-admin:root@h", role: "admin" });
    expect((await site.find("agent-a"))?.addedBy).toBe("local-admin:root@h");
    await cli.remove("agent-a", ada);
    expect(await site.find("agent-a")).toBeUndefined();
  });
});

describe("authorizations.json (the pre-ledger file) imported at start", () => {
  const logger = createLogger("test", "silent");
  async function importing(entries: unknown): Promise<{ store: ReturnType<typeof getInMemoryEventStore>; result: Promise<string[]> }> {
    const dir = mkdtempSync(join(tmpdir(), "qr-authz-"));
    writeFileSync(authorizationsFile(dir), JSON.stringify(entries));
    const store = getInMemoryEventStore();
    return { store, result: importLegacyAuthorizations(dir, new SiteAuthorizations(store), "site-b", logger).finally(() => rmSync(dir, { recursive: true })) };
  }

  it("imports entries with the old fields (trustGroup, storageRoot)", async () => {
    const { result } = await importing([{ primaryIdentity: "agent-a", trustGroup: "default", storageRoot: "/srv" }, { primaryIdentity: "agent-b" }]);
    expect(await result).toEqual(["agent-a", "agent-b"]);
  });

  it("refuses an unknown key and a missing identity, naming each entry's field and the fix; nothing is imported", async () => {
    const { store, result } = await importing([{ primaryIdentity: "agent-a", trustgroup: "default" }, { identity: "agent-b" }]);
    const err = await result.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AuthorizationInvalidError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/\[0\]\.trustgroup: unknown field: did you mean 'trustGroup'\?/);
    expect(msg).toMatch(/\[1\]\.primaryIdentity: is missing; give the primary's certificate identity/);
    expect(msg).toMatch(/\[1\]\.identity: unknown field/);
    expect(msg).toMatch(/remove it and use 'qreplica authorize'/);
    expect(await store.readStream(AUTHORIZATIONS_STREAM)).toEqual([]);
  });

  it("refuses an identity no certificate can carry, naming the entry", async () => {
    const { result } = await importing([{ primaryIdentity: "agent-a" }, { primaryIdentity: "a b" }]);
    await expect(result).rejects.toThrow(/\[1\]\.primaryIdentity: 'a b' is not a certificate identity/);
  });
});
