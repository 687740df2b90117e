// A delay line as a process of its own (see delayLineProcess.ts): argv target rttMs bitsPerSecond;
// prints the address to dial on stdout, runs until SIGTERM.
import { startDelayLine } from "./delayLine.js";

const [target, rtt, bps] = process.argv.slice(2);
if (!target || !rtt || !bps) {
  console.error("usage: delayLineMain TARGET RTT_MS BITS_PER_SECOND");
  process.exit(2);
}
const line = await startDelayLine(target, { rttMs: Number(rtt), bitsPerSecond: Number(bps) });
process.stdout.write(`${line.address}\n`);
process.once("SIGTERM", () => void line.close().then(() => process.exit(0)));
