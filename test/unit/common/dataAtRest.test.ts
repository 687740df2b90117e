import { chmodSync, lstatSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { tightenTree } from "../../../src/common/dataAtRest.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

let cleanup: (() => void) | undefined;
afterEach(() => cleanup?.());

const mode = (p: string) => lstatSync(p).mode & 0o7777;

describe("tightenTree", () => {
  it("takes group/other bits off files and directories an older version left open, keeps the owner's, leaves symlinks", () => {
    const tmp = makeTmpDir("qr-tighten-");
    cleanup = tmp.cleanup;
    const root = join(tmp.path, "site");
    mkdirSync(join(root, "storage", "vm1"), { recursive: true });
    writeFileSync(join(root, "ledger.sqlite"), "x");
    writeFileSync(join(root, "storage", "vm1", "base.qcow2"), "x");
    writeFileSync(join(root, "private.key"), "x");
    chmodSync(join(root, "ledger.sqlite"), 0o644);
    chmodSync(join(root, "storage", "vm1", "base.qcow2"), 0o664);
    chmodSync(join(root, "private.key"), 0o600);
    chmodSync(join(root, "storage", "vm1"), 0o755);
    chmodSync(join(root, "storage"), 0o755);
    chmodSync(root, 0o755);
    const outside = join(tmp.path, "outside");
    writeFileSync(outside, "x");
    chmodSync(outside, 0o644);
    symlinkSync(outside, join(root, "link"));

    expect(tightenTree(root)).toBe(5);
    expect(mode(root)).toBe(0o700);
    expect(mode(join(root, "storage"))).toBe(0o700);
    expect(mode(join(root, "storage", "vm1"))).toBe(0o700);
    expect(mode(join(root, "ledger.sqlite"))).toBe(0o600);
    expect(mode(join(root, "storage", "vm1", "base.qcow2"))).toBe(0o600);
    expect(mode(join(root, "private.key"))).toBe(0o600);
    // Not ours to change: what a symlink points at.
    expect(mode(outside)).toBe(0o644);
    expect(tightenTree(root)).toBe(0);
  });
});
