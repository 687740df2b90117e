/** The test parser of the Prometheus text format is strict: what it accepts, the site's registry produces. */
import { describe, expect, it } from "vitest";
import { SiteMetrics } from "../../../../src/site/health/siteMetrics.js";
import { parsePrometheusText, sampleValue } from "../../../helpers/promText.js";

describe("Prometheus text format", () => {
  it("parses the site's registry: HELP and TYPE for every family, histograms with +Inf buckets, counters ending in _total", async () => {
    const m = new SiteMetrics();
    m.onCommit("vm-1", { seq: 2, kind: "incremental", cutoffAt: 0, committedAt: 1500, dataBytes: 10, wireBytes: 5, durationMs: 1200 });
    const f = parsePrometheusText(await m.registry.metrics());
    expect(f.get("qreplica_site_cycle_duration_seconds")?.type).toBe("histogram");
    expect(sampleValue(f, "qreplica_site_cycle_duration_seconds", "qreplica_site_cycle_duration_seconds_bucket", { vm: "vm-1", le: "2.5" })).toBe(1);
    expect(sampleValue(f, "qreplica_site_changed_bytes_total", "qreplica_site_changed_bytes_total", { vm: "vm-1" })).toBe(10);
    expect(f.get("qreplica_site_process_cpu_seconds_total")?.type).toBe("counter");
  });

  it("refuses what Prometheus would refuse", () => {
    const ok = '# HELP a_total x\n# TYPE a_total counter\na_total{vm="v"} 1\n';
    expect(() => parsePrometheusText(ok)).not.toThrow();
    expect(() => parsePrometheusText(ok.replace("\n# TYPE a_total counter", ""))).toThrow(/without a TYPE/);
    expect(() => parsePrometheusText(ok.replace('{vm="v"}', "{vm=v}"))).toThrow(/not a valid sample/);
    expect(() => parsePrometheusText(ok.replace("a_total{", "1a{"))).toThrow(/not a valid sample/);
    expect(() => parsePrometheusText(ok.replaceAll("a_total", "a"))).toThrow(/does not end with _total/);
    expect(() => parsePrometheusText(ok.trimEnd())).toThrow(/newline/);
  });
});
