import { readFileSync } from "node:fs";
import { resolve } from "node:path";

/**
 * The README's walkthrough as the test runs it: the fenced blocks right after a
 * `<!-- walkthrough -->` marker are commands, one a line (a trailing `&` starts a daemon); a block
 * after `<!-- walkthrough: PATH -->` is a file the commands use, written to PATH.
 */
export type WalkthroughStep = { kind: "command"; line: string; argv: string[]; background: boolean } | { kind: "file"; path: string; text: string };

export const README = resolve(import.meta.dirname, "../../README.md");

export function walkthroughSteps(readme = readFileSync(README, "utf8")): WalkthroughStep[] {
  const steps: WalkthroughStep[] = [];
  const marker = /<!-- walkthrough(?::\s*(\S+))?\s*-->\s*\n```(\w*)\n([\s\S]*?)\n```/g;
  for (const m of readme.matchAll(marker)) {
    const [, path, lang, body] = m;
    if (path) {
      steps.push({ kind: "file", path, text: `${body}\n` });
      continue;
    }
    if (lang !== "sh") throw new Error(`a <!-- walkthrough --> block must be \`\`\`sh, not \`\`\`${lang}`);
    for (const raw of body!.split("\n")) {
      const line = raw.replace(/(^|\s)#.*$/, "").trim();
      if (line === "") continue;
      const background = line.endsWith("&");
      const words = (background ? line.slice(0, -1) : line).trim().split(/\s+/);
      if (words.some((w) => /["'`$;|<>\\]/.test(w))) throw new Error(`walkthrough line '${line}': keep it to plain words (no quoting, variables or redirections)`);
      if (words[0] !== "qreplica" && words[0] !== "qreplica-agent") throw new Error(`walkthrough line '${line}': only qreplica and qreplica-agent commands run here`);
      steps.push({ kind: "command", line, argv: words, background });
    }
  }
  return steps;
}
