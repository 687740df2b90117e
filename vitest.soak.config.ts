import { defineConfig } from "vitest/config";

/** `npm run test:soak`: the soak (test/soak/*.soak.ts), kept out of `npm test`'s suite. QR_SOAK_MINUTES sets its length. */
export default defineConfig({
  test: {
    include: ["test/soak/**/*.soak.ts"],
    testTimeout: 1_800_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 1,
    reporters: ["default"],
  },
});
