"""Figures, targets and verdicts from a run's raw measurements; the table, JSON and chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.common import percentile, summary

MiB = 1024 * 1024
RSS_GROWTH_TOLERANCE_MIB = 2.0  # allocator noise: "no growth" means under this over the last half


def _fig(
    fid: str,
    name: str,
    value: float,
    unit: str,
    *,
    floor: float | None = None,
    floor_name: str = "",
    ratio: float | None = None,
    limit: float | None = None,
    kind: str = "max",
    target: str = "report",
    check: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One row. ``check`` (default ``ratio``, else ``value``) is compared with ``limit`` (``kind`` max/min)."""
    if ratio is None and floor:
        ratio = value / floor
    status = "REPORT"
    if limit is not None:
        x = check if check is not None else (ratio if ratio is not None else value)
        ok = x <= limit if kind == "max" else x >= limit
        status = "PASS" if ok and not math.isnan(x) else "MISS"
    return {
        "id": fid,
        "name": name,
        "value": value,
        "unit": unit,
        "floor": floor,
        "floor_name": floor_name,
        "ratio": ratio,
        "target": target,
        "limit": limit,
        "status": status,
        "note": note,
    }


def _cpu_per_request(cpu: dict[str, float]) -> tuple[dict[str, float], float]:
    """CPU ms per request of each process of the run, and the rate the machine's cores could sustain at that cost."""
    per = {
        k: cpu[k] / cpu["requests"] * 1000
        for k in ("server", "emulator", "iam_standin")
        if k in cpu and cpu[k] > 0.00005 * cpu["requests"]
    }
    per["load generator"] = cpu["loadgen_per_request"] * 1000
    total = sum(per.values())
    return per, (cpu["cores"] * 1000 / total if total else math.inf)


def figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    raw = data["raw"]
    out: list[dict[str, Any]] = []
    lf = raw["latency_firestore"]
    ours_fs, floor_fs = lf["ours_ms"], lf["floor_ms"]
    for q, limit in ((50, 1.3), (99, 1.5)):
        out.append(
            _fig(
                f"vend_latency_p{q}_firestore",
                f"warm vend latency p{q}, HTTP function, Firestore",
                percentile(ours_fs, q),
                "ms",
                floor=percentile(floor_fs, q),
                floor_name=f"direct calls p{q} (1 IAM + batch of 2 creates + 1 update)",
                limit=limit,
                target=f"<= {limit}x",
            )
        )
    ls = raw["latency_sqlite"]
    hop = percentile(raw["http_hop"]["ms"], 50)
    iam = percentile(ls["floor_ms"], 50)
    out.append(
        _fig(
            "vend_latency_p50_sqlite",
            "warm vend latency p50, HTTP function, embedded SQLite",
            percentile(ls["ours_ms"], 50),
            "ms",
            floor=iam,
            floor_name="IAM call alone p50",
            limit=1.5,
            target="<= 1.5x",
            note=f"a handler doing nothing but the IAM call would be ~ IAM + HTTP hop = {iam + hop:.2f} ms, "
            f"{(iam + hop) / iam:.2f}x",
        )
    )
    out.append(
        _fig(
            "vend_latency_p99_sqlite",
            "warm vend latency p99, HTTP function, embedded SQLite",
            percentile(ls["ours_ms"], 99),
            "ms",
            floor=percentile(ls["floor_ms"], 99),
            floor_name="IAM call alone p99",
        )
    )
    out.append(
        _fig(
            "http_hop_p50",
            "HTTP hop: trivial handler on the same server, sequential, p50",
            hop,
            "ms",
            note="loopback request through functions-framework/gunicorn/Flask: in every vend, not in any floor",
        )
    )
    cs = raw["cold_start"]
    out.append(
        _fig(
            "cold_start",
            "cold start: import main + first vend (median)",
            cs["ours_median_s"] * 1000,
            "ms",
            floor=cs["floor_median_s"] * 1000,
            floor_name="import functions_framework, google.cloud.firestore, google.auth",
            limit=1.15,
            target="<= 1.15x",
            note=f"import main and build the service (no request): {cs['import_median_s'] * 1000:.0f} ms; "
            f"first vend: {(cs['ours_median_s'] - cs['import_median_s']) * 1000:.0f} ms",
        )
    )
    tp = raw["throughput"]
    per, ceiling = _cpu_per_request(tp["cpu_s"])
    tper, tceiling = _cpu_per_request(tp["trivial_cpu_s"])
    out.append(
        _fig(
            "throughput",
            "throughput, one instance (1 worker, 8 threads), Firestore",
            tp["rps"],
            "vends/s",
            floor=tp["trivial_rps"],
            floor_name="trivial handler, same server",
            limit=0.3,
            kind="min",
            target=">= 0.3x",
            note="CPU ms per vend: "
            + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
            + f" -> at most {ceiling:.0f} vends/s on {tp['cpu_s']['cores']:.0f} cores; trivial: "
            + ", ".join(f"{k} {v:.2f}" for k, v in tper.items())
            + f" -> at most {tceiling:.0f}/s",
        )
    )
    ts = raw["throughput_sqlite"]
    sper, sceiling = _cpu_per_request(ts["cpu_s"])
    out.append(
        _fig(
            "throughput_sqlite",
            "throughput, one instance, embedded SQLite (no emulator on the box)",
            ts["rps"],
            "vends/s",
            floor=tp["trivial_rps"],
            floor_name="trivial handler, same server",
            note="CPU ms per vend: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sper.items())
            + f" -> at most {sceiling:.0f} vends/s",
        )
    )
    rss = raw["rss"]
    vends = 2 * rss["vends_per_half"]
    peak = max(rss["peak_rss_vmhwm"], rss["peak_rss_sampled"]) / MiB
    out.append(
        _fig(
            "peak_rss",
            f"peak RSS of the instance after {vends:,} vends",
            peak,
            "MiB",
            limit=160,
            target="<= 160 MiB",
            check=peak,
            note=f"idle {rss['idle_rss'] / MiB:.1f} MiB; gunicorn arbiter {rss['arbiter_rss'] / MiB:.1f} MiB",
        )
    )
    growth = (rss["rss_after_all"] - rss["rss_after_first_half"]) / MiB
    out.append(
        _fig(
            "rss_growth_last_half",
            f"RSS growth over the last {rss['vends_per_half']:,} vends",
            growth,
            "MiB",
            limit=RSS_GROWTH_TOLERANCE_MIB,
            check=growth,
            target=f"no growth (< {RSS_GROWTH_TOLERANCE_MIB} MiB)",
            note=f"{rss['rss_after_first_half'] / MiB:.1f} -> {rss['rss_after_all'] / MiB:.1f} MiB",
        )
    )
    rt = raw["roundtrips"]
    out.append(
        _fig(
            "iam_calls_per_vend",
            "IAM calls per warm vend",
            rt["iam_calls_per_vend"],
            "calls",
            limit=1,
            check=rt["iam_calls_per_vend"],
            target="<= 1",
        )
    )
    # 2 writes (reserve, confirm) + 2 reads of the target's kill switch (before reserving, after confirming)
    out.append(
        _fig(
            "store_ops_per_vend",
            "store operations per warm vend (Firestore RPCs)",
            rt["store_ops_per_vend"],
            "ops",
            limit=4,
            check=rt["store_ops_per_vend"],
            target="<= 4",
            note=f"{rt['store_ops_by_kind_per_vend']}, {rt['documents_written_per_vend']:g} documents",
        )
    )
    out.append(
        _fig(
            "jwks_fetches_per_vend",
            "JWKS fetches per warm vend",
            rt["jwks_fetches_per_vend"],
            "fetches",
            note=f"first vend: {rt['first_vend']}",
        )
    )
    for fid, key, what in (("sweep", "sweep", "Firestore emulator"), ("sweep_sqlite", "sweep_sqlite", "SQLite")):
        sw = raw[key]
        sizes = sorted(sw["sizes"].values(), key=lambda s: s["records"])
        small, large = sizes[0], sizes[-1]
        ops = large.get("ops_per_sweep", {})
        note = (
            f"{ops.get('query', 0)} queries + {ops.get('write', 0)} write per sweep; one query matching nothing "
            f"takes {small['empty_query_s'] * 1000:.1f} ms on {small['records']:,} records and "
            f"{large['empty_query_s'] * 1000:.1f} ms on {large['records']:,}"
        )
        out.append(
            _fig(
                fid,
                f"sweep ({what}), {large['records']:,}-record ledger, {sw['due']} due",
                large["median_s"] * 1000,
                "ms",
                floor=small["median_s"] * 1000,
                floor_name=f"{small['records']:,}-record ledger, {sw['due']} due",
                limit=1.5 if fid == "sweep" else None,
                target="<= 1.5x" if fid == "sweep" else "report",
                note=note,
            )
        )
    vf = raw["verify"]
    out.append(
        _fig(
            "verify",
            "caller token verification, cached keys (Verifier.verify)",
            vf["ours_us"],
            "us/call",
            floor=vf["floor_us"],
            floor_name="bare cryptography RS256 verify",
        )
    )
    nv = raw["naive"]
    naive = nv["ms"]
    for q in (50, 99):
        ours = percentile(ours_fs, q)
        note = "ratio = naive / ours"
        if q == 50:
            note += (
                f"; naive writes 1 document per vend (ours: 3 in 2 commits), no replay check, no reservation; "
                f"its RSS {nv['rss_before'] / MiB:.0f} -> {nv['rss_after'] / MiB:.0f} MiB over {nv['vends']} vends"
            )
        out.append(
            _fig(
                f"naive_p{q}",
                f"naive function (Google samples) latency p{q}",
                percentile(naive, q),
                "ms",
                floor=ours,
                floor_name=f"our vend p{q} (Firestore)",
                note=note,
            )
        )
    return out


def _num(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return f"{s} {unit}".strip()


def table(data: dict[str, Any]) -> str:
    rows = [("Figure", "Measured", "Floor (same run)", "Ratio", "Target", "Result")]
    for f in data["figures"]:
        floor = f"{_num(f['floor'], f['unit'])}  [{f['floor_name']}]" if f["floor"] is not None else "-"
        rows.append(
            (
                f["name"],
                _num(f["value"], f["unit"]),
                floor,
                f"{f['ratio']:.2f}x" if f["ratio"] is not None else "-",
                f["target"],
                f["status"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f for f in data["figures"] if f["note"]]
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"  {f['id']}: {f['note']}" for f in notes)
    passed = sum(f["status"] == "PASS" for f in data["figures"])
    missed = [f["id"] for f in data["figures"] if f["status"] == "MISS"]
    lines.append("")
    lines.append(
        f"{passed} targets met, {len(missed)} missed{': ' + ', '.join(missed) if missed else ''}; "
        f"{data['mode']} run on {data['machine']['cpus']} CPUs, Python {data['machine']['python']}, "
        f"{data['duration_s']:.0f} s; load average before/after "
        f"{data['machine']['loadavg_before'][0]:.1f}/{data['machine']['loadavg_after'][0]:.1f}"
    )
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = data["raw"]
    series = [
        ("floor: IAM + Firestore direct", raw["latency_firestore"]["floor_ms"], "tab:gray"),
        ("vend_http, Firestore", raw["latency_firestore"]["ours_ms"], "tab:blue"),
        ("floor: IAM call alone", raw["latency_sqlite"]["floor_ms"], "tab:olive"),
        ("vend_http, SQLite", raw["latency_sqlite"]["ours_ms"], "tab:green"),
        ("naive (Google samples)", raw["naive"]["ms"], "tab:red"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    ax = axes[0][0]
    for label, values, color in series:
        data_sorted = sorted(values)
        n = len(data_sorted)
        ax.plot(
            data_sorted,
            [(i + 1) / n for i in range(n)],
            label=f"{label} (p50 {percentile(values, 50):.1f} ms)",
            color=color,
        )
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Warm latency, sequential requests: CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[0][1]
    ax.boxplot([v for _, v, _ in series], whis=(1, 99), showfliers=False)
    ax.set_xticks(
        range(1, len(series) + 1), [lbl.replace(", ", ",\n").replace(": ", ":\n") for lbl, _, _ in series], fontsize=7
    )
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Warm latency: box p25-p75, whiskers p1-p99")
    ax.grid(True, which="both", axis="y", alpha=0.3)

    ax = axes[1][0]
    cs = raw["cold_start"]
    ax.boxplot([[s * 1000 for s in cs["floor_s"]], [s * 1000 for s in cs["ours_s"]]])
    ax.set_xticks(
        [1, 2],
        ["imports alone\n(functions_framework,\nfirestore, google.auth)", "main: import +\nfirst vend"],
        fontsize=8,
    )
    ax.set_ylabel("ms")
    ax.set_title(f"Cold start ({len(cs['ours_s'])} fresh processes each)")
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[1][1]
    rss = raw["rss"]
    samples = rss["samples"]
    if samples:
        ax.plot([t for t, _ in samples], [r / MiB for _, r in samples], color="tab:purple")
    ax.axhline(160, color="tab:red", linestyle="--", label="target 160 MiB")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title(
        f"RSS during {2 * rss['vends_per_half']:,} vends at concurrency 8 ({raw['throughput']['rps']:.0f} vends/s)"
    )
    ax.set_ylim(0, 180)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Token vending benchmarks ({data['mode']} run, {data['started_at']}, {data['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compact(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw data for the JSON file: latency lists kept (the chart's source), with summaries beside them."""
    out = json.loads(json.dumps(raw))
    for key in ("latency_firestore", "latency_sqlite"):
        out[key]["ours_summary"] = summary(raw[key]["ours_ms"])
        out[key]["floor_summary"] = summary(raw[key]["floor_ms"])
    out["naive"]["summary"] = summary(raw["naive"]["ms"])
    return out


def write(data: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in data.items() if k != "raw"}
    doc["raw"] = _compact(data["raw"])
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    chart(data, out_dir / "latency.png")
