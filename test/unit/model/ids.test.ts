import { describe, expect, it } from "vitest";
import { InvalidIdError, isValidId, optionalId, requireId } from "../../../src/model/index.js";

describe("id validation (src/model/ids.ts)", () => {
  it("accepts the ids both roles make and operators choose", () => {
    for (const id of ["vm1", "web1", "vda", "rp-1", "rp-00000042", "tmi4x0k2a", "20261204-163515-ab12", "db.prod_01", "A", "9".repeat(64)]) {
      expect(isValidId(id), id).toBe(true);
    }
  });

  it("refuses path traversal, absolute paths, NUL, separators, option syntax and very long names", () => {
    const bad = [
      "",
      ".",
      "..",
      "../../evil3",
      "../x",
      "a/../../b",
      "vm/1",
      "/etc/passwd",
      "/abs",
      "C:\\x",
      "a\\b",
      "vm\0",
      "\0",
      "vm1\n",
      " vm1",
      "vm 1",
      "-rf",
      ".hidden",
      "_x",
      "drive=x,file=y",
      "x".repeat(65),
      "a".repeat(10_000),
      "vm1é",
    ];
    for (const id of bad) expect(isValidId(id), JSON.stringify(id)).toBe(false);
    expect(isValidId(undefined)).toBe(false);
    expect(isValidId(42)).toBe(false);
  });

  it("throws an error that names the kind, the place, the value and the rule", () => {
    const err = (() => {
      try {
        requireId("VM id", "../../evil3", "agent config a.yaml vms[0].id");
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(InvalidIdError);
    expect((err as InvalidIdError).code).toBe("INVALID_ID");
    expect((err as Error).message).toContain('agent config a.yaml vms[0].id: VM id "../../evil3" is not a valid id');
    expect((err as Error).message).toMatch(/letters, digits/);
  });

  it("quotes control characters and cuts very long values in the message", () => {
    expect(() => requireId("disk id", "v\0da")).toThrow('"v\\u0000da"');
    const long = "a".repeat(10_000);
    let message = "";
    try {
      requireId("test id", long);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message.length).toBeLessThan(400);
    expect(message).toContain("(10000 characters)");
  });

  it("optionalId treats proto3's empty string as not set", () => {
    expect(optionalId("recovery point id", "")).toBeUndefined();
    expect(optionalId("recovery point id", undefined)).toBeUndefined();
    expect(optionalId("recovery point id", "rp-3")).toBe("rp-3");
    expect(() => optionalId("recovery point id", "../rp-3")).toThrow(InvalidIdError);
  });
});
