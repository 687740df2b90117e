import { rmSync } from "node:fs";
import net from "node:net";

/** What the probe saw around one freeze, timed on the probe's clock (performance.now()). */
export interface FreezeObservation {
  /** guest-fsfreeze-status asked of the guest right after its freeze reply, before the agent got it. */
  statusWhileFrozen: string;
  /** Filesystems the freeze reported. */
  filesystems: number;
  /** When the agent received the freeze reply (the hook, if any, ran before). */
  frozenForwardedAt: number;
  /** When the thaw reply came from the guest, and the status asked right after it. */
  thawedAt?: number;
  statusAfterThaw?: string;
}

export interface QgaProbeOptions {
  /** Where the agent connects (its `guestAgentSocket`). */
  listenPath: string;
  /** QEMU's chardev socket of the guest's org.qemu.guest_agent.0 port. */
  upstreamPath: string;
  /** Runs while the guest is frozen, before the agent learns it is (e.g. a snapshot of the primary). */
  whileFrozen?: () => Promise<void>;
}

const SENTINEL = 0xff;

/**
 * A unix-socket relay between the agent and the guest's qemu-ga that watches the agent's freeze
 * and thaw: after each reply to guest-fsfreeze-freeze or -thaw it asks the guest itself
 * (guest-fsfreeze-status, on the same channel, with its own id) before passing the reply on, so a
 * test sees the guest's own word on the freeze rather than the agent's.
 */
export class QgaProbe {
  readonly freezes: FreezeObservation[] = [];
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly opts: QgaProbeOptions) {}

  get listenPath(): string {
    return this.opts.listenPath;
  }

  static async start(opts: QgaProbeOptions): Promise<QgaProbe> {
    rmSync(opts.listenPath, { force: true });
    const probe = new QgaProbe(opts);
    probe.server = net.createServer((agent) => probe.relay(agent));
    await new Promise<void>((resolve, reject) => {
      probe.server!.once("error", reject);
      probe.server!.listen(opts.listenPath, () => resolve());
    });
    return probe;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    rmSync(this.opts.listenPath, { force: true });
  }

  private relay(agent: net.Socket): void {
    const guest = net.createConnection(this.opts.upstreamPath);
    this.sockets.add(agent).add(guest);
    const end = () => {
      agent.destroy();
      guest.destroy();
      this.sockets.delete(agent);
      this.sockets.delete(guest);
    };
    agent.on("error", end).on("close", end);
    guest.on("error", end).on("close", end);

    const freezeIds = new Set<unknown>();
    const thawIds = new Set<unknown>();
    splitLines(agent, (raw, msg) => {
      if (msg?.execute === "guest-fsfreeze-freeze") freezeIds.add(msg.id);
      if (msg?.execute === "guest-fsfreeze-thaw") thawIds.add(msg.id);
      guest.write(raw);
    });

    let probes = 0;
    const waitingProbes = new Map<string, (reply: Record<string, unknown>) => void>();
    const askStatus = () =>
      new Promise<string>((resolve) => {
        const id = `qr-probe-${++probes}`;
        waitingProbes.set(id, (reply) => resolve(String(reply.return ?? JSON.stringify(reply.error))));
        guest.write(JSON.stringify({ execute: "guest-fsfreeze-status", id }) + "\n");
      });

    // Replies are passed on in order; one that waits for a probe holds back those after it.
    let forwarding = Promise.resolve();
    splitLines(guest, (raw, msg) => {
      const probeId = typeof msg?.id === "string" ? msg.id : undefined;
      const probeWaiter = probeId === undefined ? undefined : waitingProbes.get(probeId);
      if (probeWaiter && msg) {
        waitingProbes.delete(probeId!);
        probeWaiter(msg);
        return;
      }
      forwarding = forwarding.then(async () => {
        if (msg && freezeIds.has(msg.id) && typeof msg.return === "number") {
          const statusWhileFrozen = await askStatus();
          await this.opts.whileFrozen?.();
          this.freezes.push({ statusWhileFrozen, filesystems: msg.return, frozenForwardedAt: performance.now() });
        } else if (msg && thawIds.has(msg.id)) {
          const thawedAt = performance.now();
          const statusAfterThaw = await askStatus();
          const last = this.freezes.at(-1);
          if (last && last.thawedAt === undefined) Object.assign(last, { thawedAt, statusAfterThaw });
        }
        agent.write(raw);
      });
    });
  }
}

/** Calls `onLine` with each newline-terminated segment (0xFF sentinels kept) and its JSON, if any. */
function splitLines(socket: net.Socket, onLine: (raw: Buffer, msg: Record<string, unknown> | undefined) => void): void {
  let pending = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    for (let nl = pending.indexOf(0x0a); nl >= 0; nl = pending.indexOf(0x0a)) {
      const raw = pending.subarray(0, nl + 1);
      pending = pending.subarray(nl + 1);
      let text = raw.toString("utf8", 0, raw.length - 1);
      let start = 0;
      while (start < raw.length && raw[start] === SENTINEL) start++;
      if (start > 0) text = raw.toString("utf8", start, raw.length - 1);
      let msg: Record<string, unknown> | undefined;
      try {
        const parsed: unknown = JSON.parse(text);
        if (parsed && typeof parsed === "object") msg = parsed as Record<string, unknown>;
      } catch {
        msg = undefined;
      }
      onLine(Buffer.from(raw), msg);
    }
  });
}
