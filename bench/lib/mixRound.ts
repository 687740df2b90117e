import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createImage } from "../../src/qemu/processes/index.js";
import type { TwoSites } from "../../test/helpers/twoSites.js";
import type { BenchContext } from "../report.js";
import { benchScratch } from "./cleanup.js";
import { generateMix, writeMix, type MixData } from "./mixData.js";
import { runReferencePipeline, type ReferenceResult, type ReferenceTls } from "./referencePipeline.js";
import { replicateMix, type MixReplication } from "./replicateMix.js";

const MiB = 1024 * 1024;

/** Rounds of the mix through our processes, each paired with a run of the reference pipeline. */
export interface MixAgainstReference {
  sizeMiB: number;
  rounds: number;
  mix: MixData;
  refs: ReferenceResult[];
  ours: MixReplication;
}

const runs = new Map<boolean, Promise<MixAgainstReference>>();

/**
 * The interleaved rounds e2e-throughput and agent-cpu-per-gib both read (1 GiB of the mix, three
 * rounds; --quick 256 MiB, two): run once per `npm run bench` however many of the two are
 * selected, so the second costs no time. Each round writes the mix into the primary, runs the
 * reference while our processes idle, then lets the agent's next cycle carry the mix.
 */
export function mixAgainstReference(ctx: BenchContext): Promise<MixAgainstReference> {
  let run = runs.get(ctx.quick);
  if (!run) {
    run = measure(ctx);
    runs.set(ctx.quick, run);
  }
  return run;
}

async function measure(ctx: BenchContext): Promise<MixAgainstReference> {
  const sizeMiB = ctx.quick ? 256 : 1024;
  const rounds = ctx.quick ? 2 : 3;
  const { dir, cleanup } = benchScratch("qr-bench-e2e-", ctx.log);
  try {
    ctx.log(`generating ${sizeMiB} MiB of the mix (shared by e2e-throughput and agent-cpu-per-gib)`);
    const mix = generateMix(dir, sizeMiB * MiB);
    // The reference's source: a qcow2 holding exactly the mix, made offline.
    const refDir = join(dir, "ref");
    mkdirSync(refDir);
    const sourceImage = join(refDir, "ref-src.qcow2");
    await createImage(sourceImage, mix.totalBytes);
    await writeMix(sourceImage, mix, { format: "qcow2" });
    const tls = join(dir, "ref-tls");
    const refs: ReferenceResult[] = [];
    const oursDir = join(dir, "ours");
    mkdirSync(oursDir);
    const ours = await replicateMix({
      dir: oursDir,
      mix,
      log: ctx.log,
      rounds,
      afterSetup: async (t) => saveTls(t, tls),
      beforeCycle: async (round) => {
        const r = await runReferencePipeline({ dir: refDir, sourceImage, sizeBytes: mix.totalBytes, tls: tlsFiles(tls), log: ctx.log });
        refs[round - 1] = r;
        ctx.log(
          `round ${round} reference: ${r.seconds.toFixed(2)} s, ${(sizeMiB / r.seconds).toFixed(1)} MiB/s (copy verified identical to its source); CPU ${r.cpuSeconds.toFixed(1)} s in all (${r.cpu})`,
        );
      },
    });
    return { sizeMiB, rounds, mix, refs, ours };
  } finally {
    await cleanup.runAll();
  }
}

/** Copies the sites' CA certificate, site B's and the agent's certificate and key out of the two-site setup. */
function saveTls(t: TwoSites, dir: string): void {
  mkdirSync(dir, { mode: 0o700 });
  copyFileSync(join(t.caDir, "ca.crt"), join(dir, "ca.crt"));
  for (const [from, name] of [
    [join(t.siteB, "tls"), "site-b"],
    [join(t.dir, "agent-tls"), "agent-a"],
  ] as const) {
    copyFileSync(join(from, `${name}.crt`), join(dir, `${name}.crt`));
    copyFileSync(join(from, `${name}.key`), join(dir, `${name}.key`));
  }
}

function tlsFiles(dir: string): ReferenceTls {
  return {
    caFile: join(dir, "ca.crt"),
    serverCert: join(dir, "site-b.crt"),
    serverKey: join(dir, "site-b.key"),
    clientCert: join(dir, "agent-a.crt"),
    clientKey: join(dir, "agent-a.key"),
  };
}
