/**
 * The drill's checks against a scripted test VM (no QEMU): each polls until it passes or the
 * deadline, the failing check is named with what was last seen, a VM that dies fails `running`;
 * the TCP probe against real local sockets; when a scheduled drill is due.
 */
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { checkOrder, matchingLine, probeForwarded, runChecks, usernetState, type DrillTarget } from "../../../../src/site/drills/checks.js";
import { drillDue, DRILL_RETRY_SECONDS } from "../../../../src/site/drills/drillScheduler.js";
import type { VerificationPolicy } from "../../../../src/policy/types.js";

/** A fake VM whose serial console and agent change as the (fake) clock advances. */
function scripted(opts: { serialAfterMs?: Record<number, string>; agentFromMs?: number; exitCode?: number; diesAtMs?: number; status?: string }) {
  let now = 0;
  const target: DrillTarget = {
    async vmStatus() {
      if (opts.diesAtMs !== undefined && now >= opts.diesAtMs) return { alive: false, status: "QEMU exited" };
      return { alive: true, status: opts.status ?? "running" };
    },
    serialText() {
      return Object.entries(opts.serialAfterMs ?? {})
        .filter(([at]) => now >= Number(at))
        .map(([, line]) => line)
        .join("");
    },
    async guestPing() {
      if (opts.agentFromMs === undefined || now < opts.agentFromMs) throw new Error("no answer to guest-sync-delimited");
    },
    async guestExec(argv) {
      return { exitCode: opts.exitCode ?? 0, output: `ran ${argv.join(" ")}\n` };
    },
    async tcpProbe() {
      throw new Error("the VM has no NIC");
    },
  };
  // Each poll advances the fake clock by 1 s (the sleep itself is real but 1 ms).
  const run = (deadlineMs: number) => ({ target, deadline: deadlineMs, startedAt: 0, pollMs: 1, clock: () => (now += 1_000) });
  return { run };
}

describe("drill checks", () => {
  it("run in order (running first) and pass once the serial line appears; each records when it passed", async () => {
    expect(checkOrder({ serialPattern: "x", guestAgent: true, tcpPort: 22, guestCommand: ["/bin/true"] })).toEqual([
      "running",
      "serialPattern",
      "guestAgent",
      "tcpPort",
      "guestCommand",
    ]);
    expect(checkOrder({ guestCommand: ["/bin/true"] })).toEqual(["running", "guestAgent", "guestCommand"]);
    const vm = scripted({ serialAfterMs: { 0: "SeaBIOS\r\n", 5000: "QREPLICA-BOOT 2\r\nQREPLICA-COUNTER 41\r\n" }, agentFromMs: 9_000 });
    const r = await runChecks({ serialPattern: "^QREPLICA-COUNTER \\d+$", guestAgent: true, guestCommand: ["/usr/bin/true"] }, vm.run(60_000));
    expect(r.failed).toBeUndefined();
    expect(r.checks.map((c) => [c.check, c.passed])).toEqual([
      ["running", true],
      ["serialPattern", true],
      ["guestAgent", true],
      ["guestCommand", true],
    ]);
    expect(r.checks[1]!.detail).toBe("serial line: QREPLICA-COUNTER 41");
    expect(r.checks[1]!.atMs).toBeGreaterThanOrEqual(5_000);
    expect(r.checks[2]!.atMs).toBeGreaterThanOrEqual(9_000);
  });

  it("a pattern never printed fails serialPattern at the deadline, quoting the last line seen; later checks do not run", async () => {
    const vm = scripted({ serialAfterMs: { 0: "Boot failed: not a bootable disk\r\n" }, agentFromMs: 0 });
    const r = await runChecks({ serialPattern: "^QREPLICA-COUNTER", guestAgent: true }, vm.run(20_000));
    expect(r.failed?.check).toBe("serialPattern");
    expect(r.failed?.detail).toMatch(
      /not passed within the drill's timeout; last seen: no serial line matches \/\^QREPLICA-COUNTER\/; last line: Boot failed: not a bootable disk/,
    );
    expect(r.checks.map((c) => c.check)).toEqual(["running", "serialPattern"]);
  });

  it("a VM that dies fails at once, naming the check it was at; one QEMU reports crashed fails running", async () => {
    const dying = scripted({ diesAtMs: 3_000 });
    const r = await runChecks({ serialPattern: "never" }, dying.run(600_000));
    expect(r.failed).toMatchObject({ check: "serialPattern", detail: "the test VM is no longer running (QEMU exited)" });
    expect(r.failed!.atMs).toBeLessThan(10_000);
    const panicked = scripted({ status: "guest-panicked" });
    expect((await runChecks({ serialPattern: "x" }, panicked.run(600_000))).failed).toMatchObject({ check: "running", detail: "QEMU reports the VM guest-panicked" });
  });

  it("a guest command that exits non-zero until the deadline fails guestCommand with its status and output", async () => {
    const vm = scripted({ agentFromMs: 0, exitCode: 3 });
    const r = await runChecks({ guestCommand: ["/bin/sh", "-c", "exit 3"] }, vm.run(5_000));
    expect(r.failed?.check).toBe("guestCommand");
    expect(r.failed?.detail).toMatch(/\["\/bin\/sh","-c","exit 3"\] exited with status 3; output: ran \/bin\/sh -c exit 3/);
  });

  it("a login prompt without a newline matches (the line still being written)", () => {
    expect(matchingLine("Debian GNU/Linux 12 host ttyS0\r\n\r\nhost login: ", /login:/)).toBe("host login: ");
    expect(matchingLine("a\r\nb\r\n", /^c$/)).toBeUndefined();
  });
});

describe("TCP probe through QEMU's forward", () => {
  const servers: net.Server[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
  });
  const listen = (onConn: (s: net.Socket) => void) =>
    new Promise<number>((resolve) => {
      const server = net.createServer(onConn);
      servers.push(server);
      server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port));
    });
  // The host side as QEMU's user network shows it: it accepts whatever the guest does.
  const usernet = (state: string, port: number) =>
    `Hub -1 (net-nic0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[${state}]      13       127.0.0.1 ${port}       10.0.2.15    22     0     0\n  TCP[HOST_FORWARD]  12       127.0.0.1 ${port}       10.0.2.15    22     0     0\n`;

  it("reads the forwarded connection's state from 'info usernet', not the forward's own row", () => {
    expect(usernetState(usernet("SYN_SENT", 45678), 45678)).toBe("SYN_SENT");
    expect(usernetState(usernet("ESTABLISHED", 45678), 45678)).toBe("ESTABLISHED");
    expect(usernetState(usernet("ESTABLISHED", 45678), 45679)).toBeUndefined();
    expect(usernetState("  TCP[HOST_FORWARD]  12       127.0.0.1 45678       10.0.2.15    22     0     0\n", 45678)).toBeUndefined();
  });

  it("open once the guest completed the handshake (ESTABLISHED), or when the service speaks first", async () => {
    const silent = await listen(() => undefined);
    let polls = 0;
    expect(await probeForwarded("127.0.0.1", silent, async () => (++polls < 3 ? "SYN_SENT" : "ESTABLISHED"))).toEqual({
      open: true,
      detail: "the guest accepted the connection (ESTABLISHED)",
    });
    const banner = await listen((s) => s.write("SSH-2.0-test\r\n"));
    expect(await probeForwarded("127.0.0.1", banner, async () => "SYN_SENT")).toMatchObject({ open: true, detail: "the service answered" });
  });

  it("not open: an accepted connection the guest never answers (no network stack: SYN_SENT), or one it refuses (closed at once)", async () => {
    const silent = await listen(() => undefined);
    expect(await probeForwarded("127.0.0.1", silent, async () => "SYN_SENT", 300)).toEqual({
      open: false,
      detail: "the guest did not complete the connection within 300 ms (SYN_SENT)",
    });
    const refusing = await listen((s) => s.destroy());
    expect(await probeForwarded("127.0.0.1", refusing, async () => "SYN_SENT", 5_000)).toMatchObject({ open: false, detail: expect.stringMatching(/refused the connection/) });
  });
});

describe("when a scheduled drill is due", () => {
  const v: VerificationPolicy = { everySeconds: 3600, windowSeconds: 7200, timeoutSeconds: 300, checks: { serialPattern: "x" } };
  const T = Date.parse("2026-12-05T10:00:00Z");
  const status = (lastDrillAt?: number, state: "replicating" | "failed-over" = "replicating") => ({
    state,
    lastPointId: "rp-3",
    lastDrill: lastDrillAt === undefined ? undefined : { drillId: "d1", pointId: "rp-2", cutoffAt: "", result: "failed" as const, finishedAt: new Date(lastDrillAt).toISOString() },
  });
  it("at once for a VM never drilled, then `every` after the last drill ended", () => {
    expect(drillDue({ verification: v, status: status(), running: false, lastRefusedAt: undefined }, T)).toBe(true);
    expect(drillDue({ verification: v, status: status(T - 3599_000), running: false, lastRefusedAt: undefined }, T)).toBe(false);
    expect(drillDue({ verification: v, status: status(T - 3600_000), running: false, lastRefusedAt: undefined }, T)).toBe(true);
  });
  it("never without a policy schedule, a point, a replica state, or while one runs; a refused start waits a minute", () => {
    expect(drillDue({ verification: undefined, status: status(), running: false, lastRefusedAt: undefined }, T)).toBe(false);
    expect(drillDue({ verification: v, status: { ...status(), lastPointId: undefined }, running: false, lastRefusedAt: undefined }, T)).toBe(false);
    expect(drillDue({ verification: v, status: status(undefined, "failed-over"), running: false, lastRefusedAt: undefined }, T)).toBe(false);
    expect(drillDue({ verification: v, status: status(), running: true, lastRefusedAt: undefined }, T)).toBe(false);
    expect(drillDue({ verification: v, status: status(), running: false, lastRefusedAt: T - 10_000 }, T)).toBe(false);
    expect(drillDue({ verification: v, status: status(), running: false, lastRefusedAt: T - DRILL_RETRY_SECONDS * 1000 }, T)).toBe(true);
  });
});
