import { describe, expect, it } from "vitest";
import { getInMemoryEventStore } from "../../../src/ledger/index.js";
import { AUTHORIZATIONS_STREAM, AuthorizationInvalidError, AuthorizationNotFoundError, AuthorizationWildcardError, SiteAuthorizations } from "../../../src/site/authorizations.js";

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
