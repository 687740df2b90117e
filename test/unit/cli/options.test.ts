import { InvalidArgumentError } from "commander";
import { describe, expect, it } from "vitest";
import { choiceOption, hostPortOption, intOption } from "../../../src/cli/options.js";

describe("CLI option parsers", () => {
  it("intOption: whole numbers in range only (abc is not 24, 1.5 is not 1)", () => {
    const maxPoints = intOption(1, 100_000);
    expect(maxPoints("7")).toBe(7);
    for (const bad of ["abc", "", "1.5", "0", "-3", "100001", "1e3", "0x10", "7abc"]) {
      expect(() => maxPoints(bad), bad).toThrow(InvalidArgumentError);
    }
    expect(() => maxPoints("abc")).toThrow("'abc' is not a whole number from 1 to 100000");
    expect(() => intOption(0)("-1")).toThrow("'-1' is not a whole number >= 0");
  });

  it("hostPortOption: host:port with the port in range", () => {
    expect(hostPortOption(0)("127.0.0.1:0")).toBe("127.0.0.1:0");
    expect(hostPortOption(0)("[::]:7443")).toBe("[::]:7443");
    for (const bad of ["localhost", "h:70000", "h:", ":80", "a b:1"]) expect(() => hostPortOption(0)(bad), bad).toThrow(InvalidArgumentError);
    expect(() => hostPortOption(1)("h:0")).toThrow("port from 1 to 65535");
  });

  it("choiceOption: one of the words", () => {
    expect(choiceOption(["auto", "kvm", "tcg"] as const)("kvm")).toBe("kvm");
    expect(() => choiceOption(["auto", "kvm", "tcg"] as const)("KVM")).toThrow("'KVM' is not one of auto, kvm, tcg");
  });
});
