/**
 * A strict parser of the Prometheus text exposition format (version 0.0.4), for tests that scrape
 * /metrics: every line is a HELP, a TYPE or a sample; every sample belongs to a family declared by
 * a TYPE line before it; names, label syntax and values are checked. Throws naming the bad line.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  help: string | undefined;
  samples: Sample[];
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
const LABEL = `([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\\\\n]|\\\\[\\\\"n])*)"`;
// As Prometheus reads values (Go's ParseFloat): NaN and Inf in any case (prom-client prints "Nan").
const VALUE = "([-+]?(?:[0-9]*\\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[Nn][Aa][Nn]|[Ii][Nn][Ff]))";
const SAMPLE = new RegExp(`^(${NAME})(?:\\{((?:${LABEL})(?:,${LABEL})*,?)?\\})? ${VALUE}(?: -?[0-9]+)?$`);
const HELP = new RegExp(`^# HELP (${NAME}) (.*)$`);
const TYPE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);

const unescape = (v: string) => v.replace(/\\(["\\n])/g, (_m, c: string) => (c === "n" ? "\n" : c));

export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const helps = new Map<string, string>();
  const lines = text.split("\n");
  if (lines.at(-1) !== "") throw new Error("the exposition does not end with a newline");
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line === "") return;
    let m = HELP.exec(line);
    if (m) {
      helps.set(m[1]!, m[2]!);
      return;
    }
    m = TYPE.exec(line);
    if (m) {
      if (families.has(m[1]!)) throw new Error(`${where}: a second TYPE for ${m[1]}`);
      families.set(m[1]!, { name: m[1]!, type: m[2] as Family["type"], help: helps.get(m[1]!), samples: [] });
      return;
    }
    if (line.startsWith("#")) throw new Error(`${where}: a comment that is neither HELP nor TYPE`);
    m = SAMPLE.exec(line);
    if (!m) throw new Error(`${where}: not a valid sample line`);
    const name = m[1]!;
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? "").matchAll(new RegExp(LABEL, "g"))) {
      if (lm[1]! in labels) throw new Error(`${where}: label ${lm[1]} twice`);
      labels[lm[1]!] = unescape(lm[2]!);
    }
    const raw = m.at(-1)!;
    const value = /inf$/i.test(raw) ? (raw.startsWith("-") ? -Infinity : Infinity) : /nan$/i.test(raw) ? NaN : Number(raw);
    const family = families.get(name) ?? families.get(name.replace(/_(bucket|sum|count)$/, ""));
    if (!family) throw new Error(`${where}: sample of ${name} without a TYPE line before it`);
    if (family.type === "histogram" && family.name !== name && name.endsWith("_bucket") && labels.le === undefined) throw new Error(`${where}: a histogram bucket without le`);
    family.samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (f.help === undefined) throw new Error(`metric ${f.name} has no HELP line`);
    if (f.type === "counter" && !f.name.endsWith("_total")) throw new Error(`counter ${f.name} does not end with _total`);
    if (f.type === "histogram") {
      const infs = f.samples.filter((s) => s.name === `${f.name}_bucket` && s.labels.le === "+Inf");
      const counts = f.samples.filter((s) => s.name === `${f.name}_count`);
      if (infs.length !== counts.length) throw new Error(`histogram ${f.name}: ${counts.length} series but ${infs.length} +Inf buckets`);
    }
  }
  return families;
}

/** The value of `name` with exactly these labels (among others not given), or undefined. */
export function sampleValue(families: Map<string, Family>, family: string, name: string, labels: Record<string, string>): number | undefined {
  return families.get(family)?.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}
