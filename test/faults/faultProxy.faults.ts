/** The campaign's link faults do what they say on plain TCP (an echo server behind the proxy). */
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../helpers/processes.js";
import { FaultProxy } from "./faultProxy.js";

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

async function echoBehindProxy(): Promise<FaultProxy> {
  const server = net.createServer((s) => s.pipe(s).on("error", () => undefined));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  closers.push(() => new Promise<void>((r) => server.close(() => r())));
  const proxy = await FaultProxy.start(`127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  closers.push(() => proxy.close());
  return proxy;
}

function dial(proxy: FaultProxy): Promise<{ sock: net.Socket; got: () => string; ended: () => string | undefined }> {
  const [host, port] = proxy.address.split(":") as [string, string];
  const sock = net.connect(Number(port), host);
  let got = "";
  let ended: string | undefined;
  sock.on("data", (d: Buffer) => (got += d.toString()));
  sock.on("error", (e: NodeJS.ErrnoException) => (ended = e.code ?? e.message));
  sock.on("close", () => (ended ??= "closed"));
  closers.push(() => void sock.destroy());
  return new Promise((r) => sock.once("connect", () => r({ sock, got: () => got, ended: () => ended })));
}

describe("the campaign's TCP fault proxy", () => {
  it("forwards; stall holds bytes until heal; half-open swallows them for good; reset is an RST; cut refuses", async () => {
    const proxy = await echoBehindProxy();
    const a = await dial(proxy);
    a.sock.write("one");
    await waitFor("echo", () => (a.got() === "one" ? true : undefined), 5_000, 10);

    proxy.stall();
    a.sock.write("two");
    await new Promise((r) => setTimeout(r, 300));
    expect(a.got()).toBe("one");
    proxy.heal();
    await waitFor("held bytes delivered on heal", () => (a.got() === "onetwo" ? true : undefined), 5_000, 10);

    const b = await dial(proxy);
    proxy.blackhole();
    b.sock.write("lost");
    proxy.heal();
    await new Promise((r) => setTimeout(r, 300));
    expect(b.got()).toBe("");
    expect(b.ended()).toBeUndefined();
    const c = await dial(proxy);
    c.sock.write("fresh");
    await waitFor("a new connection works after the fault", () => (c.got() === "fresh" ? true : undefined), 5_000, 10);

    proxy.reset();
    await waitFor("a reset", () => a.ended(), 5_000, 10);
    expect(a.ended()).toBe("ECONNRESET");

    proxy.cut();
    const d = await dial(proxy);
    await waitFor("refused while cut", () => d.ended(), 5_000, 10);
    proxy.heal();
  });
});
