/** The exit status table: each kind of error says what happened. */
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { ControlCallError } from "../../../src/cli/siteClient.js";
import { EXIT, InvalidCliArgumentError, exitCodeFor } from "../../../src/cli/exitCodes.js";
import { RunbookUnreadableError } from "../../../src/runbook/errors.js";

describe("exitCodeFor", () => {
  it("maps the site's gRPC answers onto not found, refused, unreachable and invalid", () => {
    expect(exitCodeFor(new ControlCallError(status.NOT_FOUND, "no VM"))).toBe(EXIT.notFound);
    expect(exitCodeFor(new ControlCallError(status.PERMISSION_DENIED, "viewer"))).toBe(EXIT.refused);
    expect(exitCodeFor(new ControlCallError(status.FAILED_PRECONDITION, "state"))).toBe(EXIT.refused);
    expect(exitCodeFor(new ControlCallError(status.UNAVAILABLE, "down"))).toBe(EXIT.unreachable);
    expect(exitCodeFor(new ControlCallError(status.DEADLINE_EXCEEDED, "slow"))).toBe(EXIT.unreachable);
    expect(exitCodeFor(new ControlCallError(status.INVALID_ARGUMENT, "bad"))).toBe(EXIT.invalid);
    expect(exitCodeFor(new ControlCallError(status.INTERNAL, "bug"))).toBe(EXIT.failed);
  });

  it("maps our own error codes by their convention, and anything else to failed", () => {
    expect(exitCodeFor(new InvalidCliArgumentError("--role root"))).toBe(EXIT.invalid);
    expect(exitCodeFor(new RunbookUnreadableError("cannot read runbook x.yaml"))).toBe(EXIT.invalid);
    expect(exitCodeFor({ code: "SITE_CONFIG_INVALID" })).toBe(EXIT.invalid);
    expect(exitCodeFor({ code: "RUNBOOK_RUN_NOT_FOUND" })).toBe(EXIT.notFound);
    expect(exitCodeFor(new Error("plain"))).toBe(EXIT.failed);
    expect(exitCodeFor(undefined)).toBe(EXIT.failed);
    // Every status is distinct, so a script can switch on it.
    expect(new Set(Object.values(EXIT)).size).toBe(Object.keys(EXIT).length);
  });
});
