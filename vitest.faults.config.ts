import { defineConfig } from "vitest/config";

/** The fault campaign (npm run test:faults): apart from `npm test`, one long file, its output shown. */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.faults.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 1,
    reporters: ["default"],
  },
});
