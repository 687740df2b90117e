/**
 * The checks of a verification drill, run in order against the test VM until each passes or the
 * drill's deadline passes. Each check polls: a guest boots at its own pace, and a drill that gives
 * up at the first "not yet" would fail healthy points. The failing check is the one still waited
 * on when the deadline came (or the VM stopped running), with what was last seen of it.
 *
 * The VM is reached through `DrillTarget` so that the logic is tested without QEMU
 * (test/unit/site/drills/checks.test.ts); drillRunner.ts adapts a launched test VM to it.
 */
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage } from "../../common/errors.js";
import type { DrillCheckName, DrillCheckOutcome } from "../../ledger/index.js";
import type { VerificationChecks } from "../../policy/types.js";

/** What a drill needs of the test VM. */
export interface DrillTarget {
  /** QEMU's state: not alive once it exited; `status` as QMP query-status names it (running, paused, guest-panicked, shutdown...). */
  vmStatus(): Promise<{ alive: boolean; status: string }>;
  /** The serial console's text so far (COM1 log). */
  serialText(): string;
  /** guest-ping through the VM's guest agent channel; throws while the agent does not answer. */
  guestPing(timeoutMs: number): Promise<void>;
  /** Runs argv through the guest agent (guest-exec) and waits for it to exit. */
  guestExec(argv: readonly string[], timeoutMs: number): Promise<{ exitCode: number; output: string }>;
  /** Whether something inside the guest accepts a TCP connection on `guestPort` (see probeForwarded). */
  tcpProbe(guestPort: number): Promise<{ open: boolean; detail: string }>;
}

export interface CheckRun {
  readonly target: DrillTarget;
  /** ms since the epoch, on `clock`. */
  readonly deadline: number;
  /** When the drill started, for each check's `atMs`. */
  readonly startedAt: number;
  readonly signal?: AbortSignal;
  readonly pollMs?: number;
  readonly clock?: () => number;
}

export interface ChecksOutcome {
  readonly checks: DrillCheckOutcome[];
  /** The first check that did not pass; undefined when all passed. */
  readonly failed?: DrillCheckOutcome;
}

/** The checks a policy asks for, in the order they run ("running" always first). */
export function checkOrder(c: VerificationChecks): DrillCheckName[] {
  return [
    "running",
    ...(c.serialPattern !== undefined ? (["serialPattern"] as const) : []),
    ...(c.guestAgent || c.guestCommand ? (["guestAgent"] as const) : []),
    ...(c.tcpPort !== undefined ? (["tcpPort"] as const) : []),
    ...(c.guestCommand ? (["guestCommand"] as const) : []),
  ];
}

type Attempt = { passed: true; detail?: string } | { passed: false; detail: string; final?: boolean };

/** Runs every check in order; stops at the first that fails. */
export async function runChecks(checks: VerificationChecks, run: CheckRun): Promise<ChecksOutcome> {
  const clock = run.clock ?? Date.now;
  const out: DrillCheckOutcome[] = [];
  for (const name of checkOrder(checks)) {
    const verdict = await untilDeadline(run, clock, () => attempt(name, checks, run.target));
    const outcome: DrillCheckOutcome = {
      check: name,
      passed: verdict.passed,
      atMs: Math.max(0, Math.round(clock() - run.startedAt)),
      ...(verdict.detail ? { detail: verdict.detail } : {}),
    };
    out.push(outcome);
    if (!verdict.passed) return { checks: out, failed: outcome };
  }
  return { checks: out };
}

async function untilDeadline(run: CheckRun, clock: () => number, once: () => Promise<Attempt>): Promise<Attempt> {
  let last: Attempt = { passed: false, detail: "not attempted before the deadline" };
  for (;;) {
    if (run.signal?.aborted) return { passed: false, detail: `the drill was cancelled (${String(run.signal.reason ?? "site stopping")}); last seen: ${last.detail ?? ""}` };
    // The VM must still run for any check to mean anything; a VM that died fails "running" at once.
    const vm = await run.target.vmStatus().catch((err: unknown) => ({ alive: false, status: errorMessage(err) }));
    if (!vm.alive) return { passed: false, detail: `the test VM is no longer running (${vm.status})`, final: true };
    last = await once().catch((err: unknown): Attempt => ({ passed: false, detail: errorMessage(err) }));
    if (last.passed || last.final) return last;
    const left = run.deadline - clock();
    if (left <= 0) return { passed: false, detail: `not passed within the drill's timeout; last seen: ${last.detail}` };
    await sleep(Math.min(run.pollMs ?? 250, left), undefined, run.signal ? { signal: run.signal } : {}).catch(() => undefined);
  }
}

async function attempt(name: DrillCheckName, c: VerificationChecks, target: DrillTarget): Promise<Attempt> {
  switch (name) {
    case "running": {
      const vm = await target.vmStatus();
      if (vm.status === "running") return { passed: true, detail: "QEMU runs the guest's vCPUs" };
      // paused for I/O errors, guest-panicked, shutdown: the point's disk or OS is at fault, not time.
      return { passed: false, detail: `QEMU reports the VM ${vm.status}`, final: vm.status !== "prelaunch" && vm.status !== "inmigrate" };
    }
    case "serialPattern": {
      const line = matchingLine(target.serialText(), new RegExp(c.serialPattern ?? ""));
      if (line !== undefined) return { passed: true, detail: `serial line: ${clip(line)}` };
      const tail = target
        .serialText()
        .split("\n")
        .filter((l) => l.trim() !== "")
        .at(-1);
      return { passed: false, detail: `no serial line matches /${c.serialPattern}/${tail ? `; last line: ${clip(tail)}` : "; the console printed nothing"}` };
    }
    case "guestAgent":
      await target.guestPing(2_000);
      return { passed: true, detail: "guest-ping answered" };
    case "tcpPort": {
      const r = await target.tcpProbe(c.tcpPort!);
      return r.open ? { passed: true, detail: `port ${c.tcpPort} accepted a connection (${r.detail})` } : { passed: false, detail: `port ${c.tcpPort}: ${r.detail}` };
    }
    case "guestCommand": {
      const argv = c.guestCommand ?? [];
      const r = await target.guestExec(argv, 30_000);
      const said = r.output.trim() ? `; output: ${clip(r.output.trim())}` : "";
      return r.exitCode === 0 ? { passed: true, detail: `exit status 0${said}` } : { passed: false, detail: `${JSON.stringify(argv)} exited with status ${r.exitCode}${said}` };
    }
  }
}

/** The first line (complete, or the last one still being written: a login prompt ends without a newline) that matches. */
export function matchingLine(text: string, pattern: RegExp): string | undefined {
  for (const raw of text.split("\n")) {
    const line = raw.replace(/\r$/, "");
    if (pattern.test(line)) return line;
  }
  return undefined;
}

const clip = (s: string) => (s.length > 160 ? `${s.slice(0, 157)}...` : s);

/**
 * Whether something in the guest accepts a connection made to a host port that QEMU's user network
 * forwards into it. QEMU accepts on the host side before the guest has answered, so an accepted
 * connection proves nothing: `stateOf` reads the forwarded connection's TCP state on QEMU's side
 * (usernetState), which turns ESTABLISHED only when the guest answered the SYN. A guest that
 * refuses (RST) shows as the host side closing; one with no network stack stays SYN_SENT.
 */
export function probeForwarded(host: string, port: number, stateOf: () => Promise<string | undefined>, settleMs = 2_000): Promise<{ open: boolean; detail: string }> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host, port });
    let done = false;
    let last: string | undefined;
    const finish = (open: boolean, detail: string) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ open, detail });
    };
    socket.once("data", () => finish(true, "the service answered"));
    socket.once("close", () => finish(false, "the guest refused the connection (nothing listens there)"));
    socket.once("error", (err) => finish(false, err.message));
    socket.once("connect", () => {
      const until = Date.now() + settleMs;
      const poll = async () => {
        while (!done) {
          last = await stateOf().catch(() => last);
          if (last === "ESTABLISHED") return finish(true, "the guest accepted the connection (ESTABLISHED)");
          if (Date.now() > until) return finish(false, `the guest did not complete the connection within ${settleMs} ms (${last ?? "no connection state"})`);
          await sleep(100);
        }
      };
      void poll();
    });
  });
}

/**
 * The state of the connection QEMU forwards from host port `hostPort`, from HMP `info usernet`
 * (e.g. "TCP[SYN_SENT]  13  127.0.0.1 45678  10.0.2.15 22  0 0"); the forward's own listening
 * row (HOST_FORWARD) is not a connection.
 */
export function usernetState(text: string, hostPort: number): string | undefined {
  for (const line of text.split("\n")) {
    const m = /^\s*TCP\[([A-Z_0-9]+)\]\s+\d+\s+\S+\s+(\d+)\s/.exec(line);
    if (m && m[1] !== "HOST_FORWARD" && Number(m[2]) === hostPort) return m[1];
  }
  return undefined;
}
