import { readFileSync } from "node:fs";

/**
 * qreplica's version from its package.json. The file sits two levels above the sources
 * (src/common/) and three above the compiled modules (dist/src/common/): look upwards.
 */
export function packageVersion(): string {
  for (let dir = new URL("..", import.meta.url), i = 0; i < 4; dir = new URL("..", dir), i++) {
    try {
      const pkg = JSON.parse(readFileSync(new URL("package.json", dir), "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "qreplica" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // not here: one level up
    }
  }
  return "unknown";
}
