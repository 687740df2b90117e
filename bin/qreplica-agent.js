#!/usr/bin/env -S node --max-semi-space-size=4 --heap-growing-percent=100 --expose-gc
// Runs the compiled JavaScript in dist/ (see bin/qreplica.js).
import { compiledEntry } from "./compiledEntry.js";
await import(compiledEntry("qreplica-agent", "replica-agent/main"));
