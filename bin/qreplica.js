#!/usr/bin/env -S node --max-semi-space-size=4 --heap-growing-percent=100 --expose-gc
// Runs the compiled JavaScript in dist/ (`npm run build`; `npm pack` builds it). In a source checkout
// without a build, `npx tsx src/cli/main.ts` runs the sources.
import { compiledEntry } from "./compiledEntry.js";
await import(compiledEntry("qreplica", "src/cli/main"));
