import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { LineCounter, parseDocument } from "yaml";
import { ID_PATTERN } from "../model/index.js";
import { RunbookInvalidError, RunbookUnreadableError, type RunbookProblem } from "./errors.js";
import {
  DEFAULT_HOOK_TIMEOUT_SECONDS,
  DEFAULT_WAIT_TIMEOUT_SECONDS,
  FAILOVER_MODES,
  WAIT_KINDS,
  type FailoverMode,
  type Runbook,
  type RunbookConsistencyGroup,
  type RunbookGroup,
  type RunbookStep,
  type RunbookVm,
  type SiteRef,
} from "./model.js";

type Segment = string | number;
export type LocatedProblem = RunbookProblem & { at: Segment[] };
export type ValidationResult = { ok: true; runbook: Runbook } | { ok: false; problems: LocatedProblem[] };

/** A VM id as both roles take it (src/model/ids.ts): a runbook naming a longer one could never match. */
const VM_ID = ID_PATTERN;
const MAX_TIMEOUT_SECONDS = 86_400;

const pathOf = (at: Segment[]) => at.map((s, i) => (typeof s === "number" ? `[${s}]` : i === 0 ? s : `.${s}`)).join("") || "(top level)";
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Checks a parsed runbook and reports every problem at once, each with its path and the fix, so an
 * operator corrects the file in one pass rather than one error per attempt.
 */
export function validateRunbook(input: unknown, opts: { baseDir?: string } = {}): ValidationResult {
  const baseDir = resolve(opts.baseDir ?? process.cwd());
  const problems: LocatedProblem[] = [];
  const problem = (at: Segment[], message: string, fix?: string) => problems.push({ at, path: pathOf(at), message, ...(fix ? { fix } : {}) });

  const keys = (obj: Record<string, unknown>, at: Segment[], allowed: readonly string[]) => {
    for (const k of Object.keys(obj)) {
      if (allowed.includes(k)) continue;
      const near = closest(k, allowed);
      problem([...at, k], "unknown key", near ? `did you mean '${near}'?` : `allowed here: ${allowed.join(", ")}`);
    }
  };
  const str = (v: unknown, at: Segment[], what: string, fix?: string): string | undefined => {
    if (v === undefined || v === null || v === "") return void problem(at, `missing ${what}`, fix);
    if (typeof v !== "string") return void problem(at, `${what} must be a string, not ${JSON.stringify(v)}`, fix);
    return v;
  };
  const timeout = (v: unknown, at: Segment[], dflt: number): number => {
    if (v === undefined) return dflt;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v > MAX_TIMEOUT_SECONDS) {
      problem(at, `must be a number of seconds above 0 and at most ${MAX_TIMEOUT_SECONDS}, not ${JSON.stringify(v)}`, `e.g. timeoutSeconds: ${dflt}`);
      return dflt;
    }
    return v;
  };
  const path = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));

  if (!isObject(input)) {
    problem([], "a runbook is a YAML mapping with name, site and groups", "see examples/runbook.yaml");
    return { ok: false, problems };
  }
  keys(input, [], ["name", "description", "site", "failover", "groups"]);
  const name = str(input.name, ["name"], "runbook name", "name: my-app");
  const description = input.description === undefined ? undefined : str(input.description, ["description"], "description");
  const site = validateSite(input.site);
  let defaultMode: FailoverMode | undefined;
  if (input.failover !== undefined) defaultMode = mode(input.failover, ["failover"]);

  function mode(v: unknown, at: Segment[]): FailoverMode | undefined {
    if (typeof v === "string" && (FAILOVER_MODES as string[]).includes(v)) return v as FailoverMode;
    problem(
      at,
      `must be one of ${FAILOVER_MODES.join(", ")}, not ${JSON.stringify(v)}`,
      "test = drill on an isolated network, planned = the primary was shut down cleanly, unplanned = the primary is lost",
    );
    return undefined;
  }

  function validateSite(v: unknown): SiteRef | undefined {
    const at = ["site"];
    if (!isObject(v)) return void problem(at, "missing the replica site", "site: { dir: /path/to/site } on the site's host, or site: { address: host:port, ca, cert, key }");
    keys(v, at, ["dir", "address", "ca", "cert", "key", "ledger"]);
    if (v.ledger !== undefined) problem([...at, "ledger"], "is no longer used: a run is recorded in the site's ledger through its control plane", "remove site.ledger");
    if (v.dir !== undefined && v.address !== undefined) return void problem(at, "has both dir and address", "keep one: dir for a site on this host, address for a remote one");
    if (v.dir !== undefined) {
      for (const k of ["ca", "cert", "key"]) if (v[k] !== undefined) problem([...at, k], "only used with site.address", "with site.dir the site's admin certificate is used");
      const dir = str(v.dir, [...at, "dir"], "site directory");
      return dir === undefined ? undefined : { dir: path(dir) };
    }
    if (v.address === undefined) return void problem(at, "needs dir or address", "site: { dir: /path/to/site }");
    const address = str(v.address, [...at, "address"], "site address");
    if (address !== undefined && !/^(\[[0-9a-fA-F:]+\]|[^\s:[\]]+):\d{1,5}$/.test(address))
      problem([...at, "address"], `'${address}' is not host:port`, "e.g. address: replica.example.org:7443");
    const files = ["ca", "cert", "key"].map((k) => str(v[k], [...at, k], `${k} file`, "mutual TLS needs ca, cert and key (a certificate with role operator)"));
    if (address === undefined || files.some((f) => f === undefined)) return undefined;
    const [ca, cert, key] = files.map((f) => path(f!)) as [string, string, string];
    return { address, ca, cert, key };
  }

  const seen = new Map<string, string>();
  const groups: RunbookGroup[] = [];
  if (!Array.isArray(input.groups) || input.groups.length === 0) {
    problem(["groups"], "missing or empty", "groups: a list in boot order, each with vms and steps");
  } else {
    input.groups.forEach((g, gi) => {
      const at = ["groups", gi];
      if (!isObject(g)) return void problem(at, "a group is a mapping with vms and steps");
      keys(g, at, ["name", "vms", "steps"]);
      const vms: RunbookVm[] = [];
      const cgs: RunbookConsistencyGroup[] = [];
      /** `{ consistencyGroup, failover, point }`: every member of the group to one group point. */
      const consistencyGroup = (entry: Record<string, unknown>, vat: Segment[]) => {
        keys(entry, vat, ["consistencyGroup", "failover", "point"]);
        const id = str(entry.consistencyGroup, [...vat, "consistencyGroup"], "group id", "consistencyGroup: the group id as 'qreplica group list' lists it");
        if (id !== undefined && !VM_ID.test(id)) problem([...vat, "consistencyGroup"], `'${id}' is not a group id`, "letters, digits, '.', '_' and '-'");
        const key = `consistency group ${id}`;
        if (id !== undefined && seen.has(key)) problem([...vat, "consistencyGroup"], `group '${id}' is already in ${seen.get(key)}`, "a group fails over once per run");
        if (id !== undefined && !seen.has(key)) seen.set(key, pathOf(vat));
        const m = entry.failover !== undefined ? mode(entry.failover, [...vat, "failover"]) : defaultMode;
        if (m === undefined && entry.failover === undefined) problem([...vat, "failover"], "missing", "set failover: test|unplanned on the entry, or once at the top level");
        if (m === "planned") problem([...vat, "failover"], "a consistency group fails over test or unplanned", "failover: unplanned (a planned failover is per VM)");
        const point = entry.point === undefined ? "latest" : str(entry.point, [...vat, "point"], "group point", "point: latest, or a group point id");
        if (point !== undefined && /\s/.test(point))
          problem([...vat, "point"], `'${point}' is not a group point id`, "point: latest, or an id as 'qreplica group points GROUP' lists it");
        if (id && (m === "test" || m === "unplanned") && point) cgs.push({ consistencyGroup: id, failover: m, point });
      };
      if (g.vms !== undefined && !Array.isArray(g.vms)) problem([...at, "vms"], "must be a list", "vms: [{ vm: web1 }]");
      const rawVms = Array.isArray(g.vms) ? g.vms : [];
      rawVms.forEach((raw, vi) => {
        const vat = [...at, "vms", vi];
        const entry: Record<string, unknown> = typeof raw === "string" ? { vm: raw } : isObject(raw) ? raw : {};
        if (!isObject(raw) && typeof raw !== "string") return void problem(vat, "must be a VM id, { vm, failover, point } or { consistencyGroup, failover, point }");
        if (entry.consistencyGroup !== undefined && entry.vm === undefined) return void consistencyGroup(entry, vat);
        keys(entry, vat, ["vm", "failover", "point"]);
        const vm = str(entry.vm, [...vat, "vm"], "VM id", "vm: the VM id as 'qreplica status' lists it");
        if (vm !== undefined && !VM_ID.test(vm)) problem([...vat, "vm"], `'${vm}' is not a VM id`, "letters, digits, '.', '_' and '-'");
        if (vm !== undefined && seen.has(vm)) problem([...vat, "vm"], `VM '${vm}' is already in ${seen.get(vm)}`, "a VM fails over once per run: keep it in one group");
        if (vm !== undefined && !seen.has(vm)) seen.set(vm, pathOf(vat));
        let m: FailoverMode | undefined;
        if (entry.failover !== undefined) m = mode(entry.failover, [...vat, "failover"]);
        else if (defaultMode) m = defaultMode;
        else if (input.failover === undefined) problem([...vat, "failover"], "missing", "set failover: test|planned|unplanned on the VM, or once at the top level");
        const point = entry.point === undefined ? "latest" : str(entry.point, [...vat, "point"], "recovery point", "point: latest, last-clean, or a point id");
        if (point !== undefined && /\s/.test(point))
          problem([...vat, "point"], `'${point}' is not a recovery point id`, "point: latest, or an id as 'qreplica points VM' lists it");
        if (vm && m && point) vms.push({ vm, failover: m, point });
      });
      // VMs of this group and earlier ones are running when these steps run.
      const known = new Set(seen.keys());
      const steps: RunbookStep[] = [];
      if (g.steps !== undefined && !Array.isArray(g.steps)) problem([...at, "steps"], "must be a list");
      const rawSteps = Array.isArray(g.steps) ? g.steps : [];
      rawSteps.forEach((s, si) => {
        const step = validateStep(s, [...at, "steps", si], known, rawVms.length);
        if (step) steps.push(step);
      });
      if (rawVms.length === 0 && rawSteps.length === 0) problem(at, "has neither vms nor steps", "remove the group, or give it vms to fail over or steps to run");
      const groupName = g.name === undefined ? undefined : str(g.name, [...at, "name"], "group name");
      groups.push({ ...(groupName ? { name: groupName } : {}), vms, ...(cgs.length ? { consistencyGroups: cgs } : {}), steps });
    });
    if (seen.size === 0) problem(["groups"], "no VM to fail over", "list the application's VMs under groups[].vms");
  }

  function validateStep(s: unknown, at: Segment[], known: Set<string>, groupVms: number): RunbookStep | undefined {
    if (!isObject(s)) return void problem(at, "a step is a mapping: { wait: ... }, { confirm: ... } or { hook: ... }");
    const kinds = ["wait", "confirm", "hook"].filter((k) => s[k] !== undefined);
    if (kinds.length !== 1) return void problem(at, kinds.length === 0 ? "not a step" : `has ${kinds.join(" and ")}`, "a step is exactly one of wait, confirm, hook");
    const stepName = s.name === undefined ? undefined : str(s.name, [...at, "name"], "step name");
    const named = stepName ? { name: stepName } : {};
    const vmRef = (required: boolean): string | undefined => {
      if (s.vm === undefined && !required) return undefined;
      const vm = str(s.vm, [...at, "vm"], "VM id", "the VM whose serial console to watch");
      if (vm !== undefined && !known.has(vm))
        problem([...at, "vm"], `VM '${vm}' is not failed over by this group or an earlier one`, known.size ? `one of: ${[...known].join(", ")}` : "list it in vms first");
      return vm;
    };
    if (s.wait !== undefined) {
      const kind = s.wait;
      const timeoutSeconds = timeout(s.timeoutSeconds, [...at, "timeoutSeconds"], DEFAULT_WAIT_TIMEOUT_SECONDS);
      if (kind === "guest-agent") {
        return void problem(
          [...at, "wait"],
          "'guest-agent' is not supported yet: the site does not expose a failed-over VM's guest agent channel",
          "wait for a 'tcp-port' or a 'serial-log' line instead",
        );
      }
      if (typeof kind !== "string" || !WAIT_KINDS.includes(kind))
        return void problem([...at, "wait"], `unknown wait ${JSON.stringify(kind)}`, "one of vm-running, tcp-port, serial-log");
      if (kind === "vm-running") {
        keys(s, at, ["wait", "vm", "timeoutSeconds", "name"]);
        const vm = vmRef(false);
        if (vm === undefined && groupVms === 0 && s.vm === undefined) problem(at, "this group fails over no VM", "name one with vm:, or move the wait to a group with vms");
        return { wait: "vm-running", ...(vm ? { vm } : {}), timeoutSeconds, ...named };
      }
      if (kind === "tcp-port") {
        keys(s, at, ["wait", "host", "port", "timeoutSeconds", "name"]);
        const host = str(s.host, [...at, "host"], "host", "the address the application listens on, as reachable from where the runbook runs");
        if (typeof s.port !== "number" || !Number.isInteger(s.port) || s.port < 1 || s.port > 65535)
          problem([...at, "port"], `must be 1-65535, not ${JSON.stringify(s.port)}`, "port: 5432");
        return host !== undefined && typeof s.port === "number" ? { wait: "tcp-port", host, port: s.port, timeoutSeconds, ...named } : undefined;
      }
      keys(s, at, ["wait", "vm", "pattern", "timeoutSeconds", "name"]);
      const vm = vmRef(true);
      const pattern = str(s.pattern, [...at, "pattern"], "pattern", "a regular expression matched against the VM's serial console output");
      if (pattern !== undefined) {
        try {
          new RegExp(pattern, "m");
        } catch (err) {
          problem([...at, "pattern"], `not a valid regular expression: ${(err as Error).message}`, "quote the pattern in single quotes and escape regex metacharacters with \\");
        }
      }
      return vm !== undefined && pattern !== undefined ? { wait: "serial-log", vm, pattern, timeoutSeconds, ...named } : undefined;
    }
    if (s.confirm !== undefined) {
      keys(s, at, ["confirm", "name"]);
      const prompt = str(s.confirm, [...at, "confirm"], "prompt", "confirm: what the operator must check before the run goes on");
      return prompt === undefined ? undefined : { confirm: prompt, ...named };
    }
    keys(s, at, ["hook", "args", "timeoutSeconds", "vm", "env", "name"]);
    const command = str(s.hook, [...at, "hook"], "command", "hook: ./scripts/check.sh (relative to the runbook file) or an absolute path");
    const scalar = (v: unknown) => typeof v === "string" || typeof v === "number" || typeof v === "boolean";
    const args: string[] = [];
    if (s.args !== undefined && !Array.isArray(s.args)) problem([...at, "args"], "must be a list", "args: [--flag, value]");
    if (Array.isArray(s.args)) s.args.forEach((a, i) => (scalar(a) ? args.push(String(a)) : problem([...at, "args", i], "must be a string")));
    const env: Record<string, string> = {};
    if (s.env !== undefined && !isObject(s.env)) problem([...at, "env"], "must be a mapping", "env: { NAME: value }");
    if (isObject(s.env)) {
      for (const [k, v] of Object.entries(s.env)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) problem([...at, "env", k], "not an environment variable name");
        else if (k.startsWith("QREPLICA_")) problem([...at, "env", k], "QREPLICA_* variables are set by the runbook", "use another name");
        else if (!scalar(v)) problem([...at, "env", k], "must be a string");
        else env[k] = String(v);
      }
    }
    const vm = vmRef(false);
    const timeoutSeconds = timeout(s.timeoutSeconds, [...at, "timeoutSeconds"], DEFAULT_HOOK_TIMEOUT_SECONDS);
    return command === undefined ? undefined : { hook: command, args, timeoutSeconds, ...(vm ? { vm } : {}), env, ...named };
  }

  if (problems.length > 0 || !name || !site) return { ok: false, problems };
  return { ok: true, runbook: { name, ...(description ? { description } : {}), site, groups, baseDir } };
}

/** Reads and validates a runbook file; YAML syntax errors and validation problems carry line numbers. */
export function loadRunbook(file: string): Runbook {
  const path = resolve(file);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new RunbookUnreadableError(`cannot read runbook ${path}: ${(err as Error).message}`, { cause: err });
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new RunbookInvalidError(
      path,
      doc.errors.map((e) => ({ path: "(yaml)", message: e.message.split("\n")[0]!, line: lines.linePos(e.pos[0]).line, fix: "fix the YAML syntax" })),
    );
  }
  let input: unknown;
  try {
    input = doc.toJS();
  } catch (err) {
    // An alias to an anchor never set, or aliases past the limit (a "billion laughs" document).
    throw new RunbookInvalidError(path, [
      { path: "(yaml)", message: (err as Error).message.split("\n")[0]!, fix: "set each anchor (&name) before its alias (*name), and expand repeated aliases" },
    ]);
  }
  const result = validateRunbook(input, { baseDir: dirname(path) });
  if (result.ok) return result.runbook;
  throw new RunbookInvalidError(
    path,
    result.problems.map(({ at, ...p }) => {
      // The key itself may be missing: point at the nearest enclosing node that exists.
      for (let n = at.length; n >= 0; n--) {
        const node = doc.getIn(at.slice(0, n), true) as { range?: [number, number, number] } | undefined;
        if (node?.range) return { ...p, line: lines.linePos(node.range[0]).line };
      }
      return p;
    }),
  );
}

/** The allowed key a typo most likely meant: a common prefix, or at most 2 edits away (of the key or its start). */
function closest(key: string, allowed: readonly string[]): string | undefined {
  const k = key.toLowerCase();
  const prefixed = allowed.find((a) => k.length >= 3 && (a.toLowerCase().startsWith(k) || k.startsWith(a.toLowerCase())));
  if (prefixed) return prefixed;
  let best: { a: string; d: number } | undefined;
  for (const a of allowed) {
    const al = a.toLowerCase();
    // A typo of the key's start counts too: "timout" for "timeoutSeconds".
    const d = Math.min(editDistance(k, al), k.length >= 4 ? editDistance(k, al.slice(0, k.length + 1)) : Infinity);
    if (d <= 2 && (!best || d < best.d)) best = { a, d };
  }
  return best?.a;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}
