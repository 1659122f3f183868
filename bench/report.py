"""Figures, targets and verdicts from a run's raw measurements; the table, JSON and chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.common import percentile, summary

MiB = 1024 * 1024
STORES = {"firestore": "Firestore", "sqlite": "SQLite"}  # backend -> label
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
    in_the_way: str = "",
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
        # for a miss: what stands in the way (measured in the same run) and what it would take
        "in_the_way": in_the_way if status == "MISS" else "",
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


def _sum_blocks(blocks: list[dict[str, Any]]) -> dict[str, float]:
    """Blocks of one side at one concurrency level, added up: CPU seconds per process, requests, wall."""
    total: dict[str, float] = {}
    for b in blocks:
        for k, v in b["cpu_s"].items():
            if k != "cores":
                total[k] = total.get(k, 0.0) + v * (b["n"] if k == "loadgen_per_request" else 1)
        total["cores"] = b["cpu_s"]["cores"]
        total["n"] = total.get("n", 0.0) + b["n"]
        total["wall_s"] = total.get("wall_s", 0.0) + b["wall_s"]
    total["loadgen_per_request"] = total.get("loadgen_per_request", 0.0) / max(1.0, total.get("n", 1.0))
    total["rps"] = total["n"] / total["wall_s"] if total.get("wall_s") else math.nan
    return total


def server_cpu_ms(blocks: list[dict[str, Any]]) -> float:
    """Server-process CPU milliseconds per request (arbiter + worker, every thread)."""
    t = _sum_blocks(blocks)
    return t["server"] / t["requests"] * 1000


# The cold-start steps (bench/harness.py COLD_SPLIT) that are pydantic's and PyYAML's work: importing them, and
# pydantic building the core schemas of the policy's models (its `_model_construction` / `_generate_schema`).
COLD_LIBRARY_STEPS = ("pydantic import", "yaml import", "vending.config: building the policy's pydantic models")


def _cold_in_the_way(cs: dict[str, Any], split: dict[str, dict[str, float]]) -> str:
    lib = {name: split[name]["wall_s"] for name in COLD_LIBRARY_STEPS if name in split}
    lib_s = sum(lib.values())
    own = {name: v["wall_s"] for name, v in split.items() if name not in lib and not name.startswith("libraries")}
    over = cs["ours_median_s"] - cs["floor_median_s"]
    rest = cs["ours_median_s"] - lib_s
    return (
        f"of the {over * 1000:.0f} ms over the floor (budget {0.15 * cs['floor_median_s'] * 1000:.0f} ms), the "
        f"configuration libraries take {lib_s * 1000:.0f} ms: "
        + " + ".join(f"{k} {v * 1000:.0f} ms" for k, v in lib.items())
        + f"; the service's own steps {sum(own.values()) * 1000:.0f} ms ("
        + ", ".join(f"{k} {v * 1000:.0f}" for k, v in own.items())
        + f"); without the configuration libraries the cold start would be {rest * 1000:.0f} ms, "
        f"{rest / cs['floor_median_s']:.2f}x the floor (steps from bench/harness.py COLD_SPLIT, fresh processes "
        "of their own: +-10% between runs). What it would take: no pydantic on the cold path (the policy "
        "validated at deploy time into a snapshot that the standard library loads, or a lighter validation "
        "library), a rewrite of vending/config.py's models, schema and diagnostics; PyYAML is already on libyaml"
    )


def _sweep_in_the_way(small: dict[str, Any], large: dict[str, Any], sqlite: dict[str, Any] | None) -> str:
    text = (
        f"the Firestore emulator has no indexes, so every query scans its collection: one query matching "
        f"nothing costs {small['empty_query_s'] * 1000:.1f} ms on {small['records']:,} records and "
        f"{large['empty_query_s'] * 1000:.1f} ms on {large['records']:,} "
        f"({large['empty_query_s'] / small['empty_query_s']:.1f}x) with the same queries"
    )
    if sqlite:
        sizes = sorted(sqlite["sizes"].values(), key=lambda s: s["records"])
        text += f"; the same sweep on the indexed SQLite store: {sizes[-1]['median_s'] / sizes[0]['median_s']:.2f}x"
    return text + (
        ". What it would take: a real Firestore database, whose queries are served by the indexes "
        "terraform/modules/token-vending/firestore.tf declares (cost per result, not per record); "
        "not reachable offline"
    )


def figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    raw = data["raw"]
    out: list[dict[str, Any]] = []
    hop = percentile(raw["http_hop"]["ms"], 50)
    for backend, label in (("firestore", "Firestore"), ("sqlite", "embedded SQLite")):
        lat = raw[f"latency_{backend}"]
        for q, limit in ((50, 1.15), (99, 1.3)):
            out.append(
                _fig(
                    f"vend_latency_p{q}_{backend}",
                    f"warm vend latency p{q}, HTTP function, {label}",
                    percentile(lat["ours_ms"], q),
                    "ms",
                    floor=percentile(lat["floor_ms"], q),
                    floor_name=f"floor function p{q}, same server (verify + 2 reads + 2 writes + 1 IAM)",
                    limit=limit,
                    target=f"<= {limit}x",
                    note=(
                        f"difference {percentile(lat['ours_ms'], q) - percentile(lat['floor_ms'], q):+.2f} ms"
                        if q == 50
                        else ""
                    ),
                )
            )
    tr = raw["trivial"]
    tper, _ = _cpu_per_request(tr["cpu_s"])
    out.append(
        _fig(
            "http_hop_p50",
            "HTTP hop: trivial handler on the same server, sequential, p50",
            hop,
            "ms",
            note=f"in the vend and in its floor alike; a do-nothing request costs the server {tper['server']:.2f} ms "
            f"CPU ({tr['rps']:.0f} requests/s at concurrency 8)",
        )
    )
    for key, label in (("cold_start", "Firestore"), ("cold_start_sqlite", "SQLite")):
        cs = raw[key]
        note = (
            f"ours: app created {cs['ours_app_median_s'] * 1000:.0f} ms + first vend (service built in it) "
            f"{(cs['ours_median_s'] - cs['ours_app_median_s']) * 1000:.0f} ms; floor: app "
            f"{cs['floor_app_median_s'] * 1000:.0f} ms + first vend "
            f"{(cs['floor_median_s'] - cs['floor_app_median_s']) * 1000:.0f} ms; process CPU over the same span "
            f"{cs['ours_cpu_median_s'] * 1000:.0f} ms vs {cs['floor_cpu_median_s'] * 1000:.0f} ms "
            f"({cs['ours_cpu_median_s'] / cs['floor_cpu_median_s']:.2f}x)"
        )
        split = raw.get("cold_split" if key == "cold_start" else "cold_split_sqlite")
        in_the_way = ""
        if split:
            note += "; CPU ms of each step in a fresh process (median of 2): " + "; ".join(
                f"{name} {v['cpu_s'] * 1000:.0f}" for name, v in split.items()
            )
            in_the_way = _cold_in_the_way(cs, split)
        out.append(
            _fig(
                key,
                f"cold start, {label}: fresh process, import + first vend (median)",
                cs["ours_median_s"] * 1000,
                "ms",
                floor=cs["floor_median_s"] * 1000,
                floor_name="floor function: its imports + first vend (JWKS fetch, store, IAM; fresh clients)",
                limit=1.15,
                target="<= 1.15x",
                note=note,
                in_the_way=in_the_way,
            )
        )
    for backend, label in STORES.items():
        levels = raw[f"cpu_{backend}"]
        for c in sorted(levels, key=int):
            ours_t, floor_t = _sum_blocks(levels[c]["ours"]), _sum_blocks(levels[c]["floor"])
            ours, floor = server_cpu_ms(levels[c]["ours"]), server_cpu_ms(levels[c]["floor"])
            per, ceiling = _cpu_per_request(ours_t)
            out.append(
                _fig(
                    f"cpu_per_vend_{backend}_c{c}",
                    f"server CPU per vend, {label}, {c} concurrent",
                    ours,
                    "ms",
                    floor=floor,
                    floor_name="floor function, same server and load",
                    limit=1.5,
                    target="<= 1.5x",
                    note=f"{1000 / ours:.0f} vends per server CPU-second (floor {1000 / floor:.0f}); "
                    f"{ours_t['rps']:.0f} vends/s (floor {floor_t['rps']:.0f}/s); CPU ms per vend: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                    + f" -> at most {ceiling:.0f} vends/s on {ours_t['cores']:.0f} cores",
                )
            )
    rss = raw["rss"]
    vends = rss["vends_total"]
    peak = max(rss["peak_rss_vmhwm"], rss["peak_rss_sampled"]) / MiB
    other = next((b for b in STORES if f"rss_{b}" in raw), None)
    if other:  # the instance on the other store: its own peak, after its latency and concurrency-8 blocks
        op = raw[f"rss_{other}"]
        out.append(
            _fig(
                f"peak_rss_{other}",
                f"peak RSS of the instance after {op['vends']:,} vends ({STORES[other]})",
                op["peak_rss_vmhwm"] / MiB,
                "MiB",
                limit=160,
                target="<= 160 MiB",
                check=op["peak_rss_vmhwm"] / MiB,
                note="the worker's VmHWM; the 10,000-vend run (growth) is on the other store, to fit the 5-minute run",
            )
        )
    out.append(
        _fig(
            "peak_rss",
            f"peak RSS of the instance after {vends:,} vends ({STORES[rss.get('backend', 'firestore')]})",
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
                limit=1.5,
                target="<= 1.5x",
                note=note,
                # The emulator has no indexes (its miss is named); SQLite builds the declared ones: no excuse.
                in_the_way=_sweep_in_the_way(small, large, raw.get("sweep_sqlite")) if fid == "sweep" else "",
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
    ours_fs = raw["latency_firestore"]["ours_ms"]
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
    blocked = [f for f in data["figures"] if f.get("in_the_way")]
    if blocked:
        lines.append("")
        lines.append("What stands in the way of each miss (measured in this run):")
        lines.extend(f"  {f['id']}: {f['in_the_way']}" for f in blocked)
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
        ("floor function, Firestore", raw["latency_firestore"]["floor_ms"], "tab:gray"),
        ("vend_http, Firestore", raw["latency_firestore"]["ours_ms"], "tab:blue"),
        ("floor function, SQLite", raw["latency_sqlite"]["floor_ms"], "tab:olive"),
        ("vend_http, SQLite", raw["latency_sqlite"]["ours_ms"], "tab:green"),
        ("naive (Google samples)", raw["naive"]["ms"], "tab:red"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(20, 10))
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
    ax.set_xticks(range(1, len(series) + 1), [lbl.replace(", ", ",\n") for lbl, _, _ in series], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Warm latency: box p25-p75, whiskers p1-p99")
    ax.grid(True, which="both", axis="y", alpha=0.3)

    ax = axes[0][2]
    cold = [
        ("floor,\nFirestore", raw["cold_start"]["floor_s"]),
        ("main,\nFirestore", raw["cold_start"]["ours_s"]),
        ("floor,\nSQLite", raw["cold_start_sqlite"]["floor_s"]),
        ("main,\nSQLite", raw["cold_start_sqlite"]["ours_s"]),
    ]
    ax.boxplot([[s * 1000 for s in v] for _, v in cold])
    ax.set_xticks(range(1, len(cold) + 1), [lbl for lbl, _ in cold], fontsize=8)
    ax.set_ylabel("ms (import + first vend)")
    ax.set_title(f"Cold start ({len(raw['cold_start']['ours_s'])} fresh processes each)")
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[1][0]
    for backend, color in (("firestore", "tab:blue"), ("sqlite", "tab:green")):
        levels = raw[f"cpu_{backend}"]
        cs = sorted(levels, key=int)
        for side, style in (("ours", "-"), ("floor", "--")):
            ys = [1000 / server_cpu_ms(levels[c][side]) for c in cs]
            ax.plot([int(c) for c in cs], ys, style, marker="o", color=color, label=f"{side}, {backend}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.set_xlabel("concurrent requests (server threads = max(8, concurrency))")
    ax.set_ylabel("vends per server CPU-second")
    ax.set_title("CPU efficiency of one instance by concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][1]
    for backend, color in (("firestore", "tab:blue"), ("sqlite", "tab:green")):
        levels = raw[f"cpu_{backend}"]
        cs = sorted(levels, key=int)
        for side, style in (("ours", "-"), ("floor", "--")):
            ys = [_sum_blocks(levels[c][side])["rps"] for c in cs]
            ax.plot([int(c) for c in cs], ys, style, marker="o", color=color, label=f"{side}, {backend}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("vends/s (2 shared cores, emulator and stand-in on the box)")
    ax.set_title("Throughput of one instance by concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][2]
    rss = raw["rss"]
    samples = rss["samples"]
    if samples:
        ax.plot([t for t, _ in samples], [r / MiB for _, r in samples], color="tab:purple")
    ax.axhline(160, color="tab:red", linestyle="--", label="target 160 MiB")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title(
        f"RSS up to the instance's {rss['vends_total']:,}th vend, concurrency 8 ({STORES[rss.get('backend', 'firestore')]})"
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
