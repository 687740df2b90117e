import { describe, expect, it } from "vitest";
import { YoungGc } from "../../../src/common/youngGc.js";

describe("YoungGc", () => {
  it("collects once every everyBytes of data, counting from the last collection", () => {
    let collections = 0;
    const g = new YoungGc(100, () => collections++);
    g.note(60);
    expect(collections).toBe(0);
    g.note(60); // 120: one collection, the count starts again
    expect(collections).toBe(1);
    g.note(99);
    expect(collections).toBe(1);
    g.note(1);
    expect(collections).toBe(2);
  });

  it("does nothing without a collector (node without --expose-gc)", () => {
    expect(() => new YoungGc(1, undefined).note(10)).not.toThrow();
  });
});
