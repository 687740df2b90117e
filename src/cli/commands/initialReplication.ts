import { resolve } from "node:path";
import type { Command } from "commander";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { controlClient, unary } from "../siteClient.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";
import type { ProgressMode } from "../progress.js";
import { waitUntilReplicating, withProgress } from "./wait.js";

/** The site copies (seed) or checks and converts (import) whole disks before it answers: hours for large ones. */
const LOCAL_COPY_TIMEOUT_MS = 24 * 3600_000;

const TARGET_HELP = { dir: "the replica site's directory on this host", site: "the replica site's address" };

function told(notified: boolean): string {
  return notified ? "the primary's agent was told" : "the primary's agent is not connected (or not waiting); it learns it at its next connection";
}

/** `--disk vda=IMAGE`, paths made absolute here: the site resolves nothing relative to its own directory. */
function parseSeeds(values: string[]): Array<{ diskId: string; imagePath: string }> {
  if (values.length === 0) throw new InvalidCliArgumentError("give one --disk DISK=IMAGE per disk, e.g. --disk vda=/srv/restore/web1-vda.qcow2");
  return values.map((s) => {
    const eq = s.indexOf("=");
    if (eq < 1 || eq === s.length - 1) throw new InvalidCliArgumentError(`--disk ${s}: expected DISK=IMAGE, e.g. vda=/srv/restore/web1-vda.qcow2`);
    return { diskId: s.slice(0, eq), imagePath: resolve(s.slice(eq + 1)) };
  });
}

/** Initial replication choices on the replica site: a seed it already holds, or the primary's export. */
export function registerInitialReplication(program: Command): void {
  withProgress(
    withTarget(
      program
        .command("seed <vm>")
        .description(
          "seed a VM's initial replication from images on this host (a restored backup, an old copy): they are copied into the VM's storage and the first cycle sends only the 64 KiB chunks that differ",
        ),
      TARGET_HELP,
    )
      .option("--disk <disk=image...>", "an image per disk (qcow2 or raw) on the replica site's host", [])
      .option("--wait", "wait until the seeded first point is committed, showing its progress on stderr", false),
  ).action(async (vm: string, o: Target & { disk: string[]; wait: boolean; progress: ProgressMode }) => {
    try {
      const seeds = parseSeeds(o.disk);
      const client = controlClient(o);
      const r = await unary(client, client.seedInitialReplication, { vmId: vm, seeds }, LOCAL_COPY_TIMEOUT_MS);
      if (o.wait) {
        const rel = await waitUntilReplicating(client, vm, o.progress);
        const point = rel?.lastRecoveryPoint?.recoveryPointId ?? "";
        emit(o.json, { ...r, state: "replicating", recoveryPointId: point }, () => `VM ${vm}: seeded first point ${point} committed`);
      } else emit(o.json, r, () => `VM ${vm}: seed registered (${r.localBytes} bytes copied into its storage); ${told(r.agentNotified)}`);
      client.close();
    } catch (err) {
      fail(err, o.json);
    }
  });

  withTarget(
    program.command("import <vm>").description("import the primary's export (written by its agent with initialReplication: { export: DIR }) as the VM's first recovery point"),
    TARGET_HELP,
  )
    .requiredOption("--from <dir>", "the export directory on the replica site's host (manifest.json and one image per disk)")
    .action(async (vm: string, o: Target & { from: string }) => {
      try {
        const client = controlClient(o);
        const r = await unary(client, client.importInitialReplication, { vmId: vm, exportDir: resolve(o.from) }, LOCAL_COPY_TIMEOUT_MS);
        emit(
          o.json,
          r,
          () => `VM ${vm}: export imported as ${r.recoveryPointId} (cut-off ${r.cycleSequence}, ${r.localBytes} bytes, none over the network); ${told(r.agentNotified)}`,
        );
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });
}
