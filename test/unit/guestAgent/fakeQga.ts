import net from "node:net";
import { join } from "node:path";
import { makeTmpDir } from "../../helpers/tmpDir.js";

/** What the fake writes for one command: a reply, raw bytes, or nothing at all (a hung agent). */
export type FakeReply = { return: unknown } | { error: { class: string; desc: string } } | { raw: string | Buffer } | { none: true };

export type FakeHandler = (args: Record<string, unknown> | undefined) => FakeReply | Promise<FakeReply>;

/**
 * A qemu-guest-agent stand-in on a unix socket: sees 0xFF as a flush like the real one, answers
 * guest-sync-delimited with the sentinel, and keeps a freeze state. Handlers per command script
 * the failures real agents show.
 */
export class FakeQga {
  readonly socketPath: string;
  /** Commands in arrival order, guest-sync-delimited included. */
  readonly received: string[] = [];
  /** 0xFF bytes received: clients must send one before each sync. */
  sentinelsReceived = 0;
  state: "thawed" | "frozen" = "thawed";
  /** Written before the sentinel of every sync reply: stale output the client must skip. */
  beforeSentinel: string | Buffer = "";
  answerSync = true;
  echoId = true;
  private readonly handlers = new Map<string, FakeHandler>();
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly tmp = makeTmpDir("qr-qga-");

  private constructor() {
    this.socketPath = join(this.tmp.path, "qga.sock");
    this.server = net.createServer((socket) => this.serve(socket));
    this.on("guest-ping", () => ({ return: {} }));
    this.on("guest-fsfreeze-status", () => ({ return: this.state }));
    this.on("guest-fsfreeze-freeze", () => {
      this.state = "frozen";
      return { return: 2 };
    });
    this.on("guest-fsfreeze-thaw", () => {
      this.state = "thawed";
      return { return: 2 };
    });
  }

  static async start(): Promise<FakeQga> {
    const fake = new FakeQga();
    await new Promise<void>((resolve) => fake.server.listen(fake.socketPath, resolve));
    return fake;
  }

  on(command: string, handler: FakeHandler): this {
    this.handlers.set(command, handler);
    return this;
  }

  commands(): string[] {
    return this.received.filter((c) => c !== "guest-sync-delimited");
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.tmp.cleanup();
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => undefined);
    let pending = "";
    let chain = Promise.resolve();
    socket.on("data", (chunk: Buffer) => {
      // Like QGA's JSON lexer, a 0xFF byte abandons any partial request.
      for (const [i, part] of chunk.toString("latin1").split("\xff").entries()) {
        if (i > 0) {
          pending = "";
          this.sentinelsReceived++;
        }
        pending += part;
        let nl: number;
        while ((nl = pending.indexOf("\n")) !== -1) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line.trim()) chain = chain.then(() => this.onLine(socket, line));
        }
      }
    });
  }

  private async onLine(socket: net.Socket, line: string): Promise<void> {
    let req: { execute?: string; arguments?: Record<string, unknown>; id?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      socket.write(JSON.stringify({ error: { class: "GenericError", desc: "JSON parse error" } }) + "\n");
      return;
    }
    const command = String(req.execute);
    this.received.push(command);
    if (command === "guest-sync-delimited" && !this.handlers.has(command)) {
      if (!this.answerSync) return;
      socket.write(this.beforeSentinel);
      socket.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: req.arguments?.id }) + "\n")]));
      return;
    }
    const handler = this.handlers.get(command);
    const reply: FakeReply = handler ? await handler(req.arguments) : { error: { class: "CommandNotFound", desc: `The command ${command} has not been found` } };
    if ("none" in reply) return;
    if ("raw" in reply) {
      socket.write(reply.raw);
      return;
    }
    const withId = this.echoId && req.id !== undefined ? { ...reply, id: req.id } : reply;
    if (!socket.destroyed) socket.write(JSON.stringify(withId) + "\n");
  }
}
