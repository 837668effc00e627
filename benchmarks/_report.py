"""Turning results into a printed table, target checks, and a PNG chart."""

from __future__ import annotations

from typing import Any

BUS = "lifecycle-bus"
GATHER = "asyncio.gather"
DJANGO = "django asend_robust"
FLOOR = "plain loop (floor)"
NATIVE_TRIO = "native trio nursery + move_on_after"
MATCHING = "lifecycle-bus, the matching subscriber alone"
IDLE_SUFFIX = " [no slow handlers, after 50 ms idle]"

TITLES = {
    "s1_async": "1. async handlers, no suspension: time per emit",
    "s2_suspend": "2. async handlers that suspend once: time per emit",
    "s3_sync": "3. plain sync handlers: time per emit",
    "s4_background": "4. background handlers: emit returned [all done]",
    "s5_isolation": "5. isolation (N-2 fast + 1 raising + 1 hanging, 50 ms timeout): emit returned [fast done]",
    "s6_environment": "6. Environment run, empty body (starting + exited): time per run",
    "s9_slow": "9. async handlers still running after the first yields (4 suspensions): time per emit",
    "s10_labels": "10. label filters: 1 matching subscriber among N for other labels: time per emit",
    "s11_big": "11. 10,000 async handlers, no suspension: time per emit",
    "s12_unfrozen": "12. scenario 1 at the largest N with the heap not frozen: time per emit",
}


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def _case_names(results: dict[Any, dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for by_case in results.values():
        for name in by_case:
            if name not in names:
                names.append(name)
    return names


def latency_table(key: str, results: dict[Any, dict[str, Any]], title: str | None = None) -> str:
    """Rows: alternatives; columns: N. A cell: median (p99/median), or [secondary]."""
    sizes = list(results)
    names = _case_names(results)
    secondary = any(
        "secondary_median_s" in summary
        for by_case in results.values()
        for summary in by_case.values()
    )
    width = max(len(name) for name in names) + 2
    cell = 31 if secondary else 23
    lines = [f"## {title or TITLES.get(key, key)}"]
    lines.append(
        "iso/conc/tmo = isolates failures / runs concurrently / enforces timeouts; "
        + (
            "cell: median [secondary median] (p99/median, spread of round medians)"
            if secondary
            else "cell: median (p99/median, spread of round medians)"
        )
    )
    header = f"{'alternative':<{width}}{'i/c/t':<7}" + "".join(
        f"{'N=' + str(n):>{cell}}" for n in sizes
    )
    header += "   gc runs/1k emits by N (of which full)"
    lines += [header, "-" * len(header)]
    for name in names:
        marks = ""
        row = ""
        gcs = []
        for n in sizes:
            summary = results[n].get(name)
            if summary is None:
                row += f"{'n/a':>{cell}}"
                gcs.append("-")
                continue
            flags = summary["flags"]
            marks = "/".join(
                "y" if flags[f] else "-" for f in ("isolates", "concurrent", "timeouts")
            )
            text = fmt(summary["median_s"])
            if "secondary_median_s" in summary:
                text += f" [{fmt(summary['secondary_median_s'])}]"
            if "too slow" in summary.get("note", ""):
                text += " (1 emit)*"
            elif summary["median_s"]:
                spread = summary.get("spread")
                text += f" ({summary['p99_s'] / summary['median_s']:.1f}x"
                text += f" {spread:.0%})" if spread is not None else ")"
            row += f"{text:>{cell}}"
            per_k = summary["gc_runs_per_1000_emits"]
            full = summary.get("gc_full_runs_per_1000_emits")
            gcs.append(
                "-" if per_k is None else f"{per_k:.0f}" + (f"({full:.0f} full)" if full else "")
            )
        lines.append(f"{name:<{width}}{marks:<7}{row}   {' '.join(gcs)}")
    return "\n".join(lines)


def ratio_table(results: dict[Any, dict[str, Any]], subject: str, against: list[str]) -> str:
    sizes = list(results)
    lines = [f"{subject} median divided by:" + "".join(f"{'N=' + str(n):>10}" for n in sizes)]
    for other in against:
        row = f"  {other:<36}"
        for n in sizes:
            mine = results[n].get(subject, {}).get("median_s")
            theirs = results[n].get(other, {}).get("median_s")
            row += f"{(mine / theirs):>10.2f}" if mine and theirs else f"{'-':>10}"
        lines.append(row)
    return "\n".join(lines)


def sustained_table(results: dict[Any, dict[str, Any]]) -> str:
    lines = ["## 8. sustained emits with a steady subscriber set"]
    lines.append(
        f"{'N':>6}  {'alternative':<28}{'events/s':>12}{'RSS growth':>13}{'blocks growth':>15}"
    )
    for n, by_case in results.items():
        for name, row in by_case.items():
            lines.append(
                f"{n:>6}  {name:<28}{row['events_per_s']:>12,.0f}{row['rss_growth_kib']:>10} KiB"
                f"{row['allocated_blocks_growth']:>15}"
            )
    return "\n".join(lines)


def memory_table(results: dict[str, Any]) -> str:
    lines = [f"## 7. memory (tracemalloc, N = {results['size']})"]
    for name, value in results["bytes_per_subscription"].items():
        lines.append(f"  per subscription   {name:<34}{value:>8.0f} B")
    for name, value in results["bytes_per_in_flight_handler"].items():
        lines.append(f"  per in-flight bg   {name:<34}{value:>8.0f} B")
    return "\n".join(lines)


def check_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issues 5 and 8, checked against this run's figures."""
    checks: list[dict[str, Any]] = []

    def add(target: str, ok: bool, detail: str) -> None:
        checks.append({"target": target, "met": ok, "detail": detail})

    for key, bus in (
        ("s1_async", BUS),
        ("s2_suspend", BUS),
        ("s3_sync", "lifecycle-bus (threads)"),
    ):
        results = data.get(key)
        if not results:
            continue
        django = DJANGO if key != "s3_sync" else "django asend_robust (one sync_to_async thread)"
        gather = GATHER if key != "s3_sync" else "asyncio.gather + run_in_executor"
        for n, by_case in results.items():
            mine = by_case.get(bus, {}).get("median_s")
            dj = by_case.get(django, {}).get("median_s")
            ga = by_case.get(gather, {}).get("median_s")
            if mine and dj:
                add(
                    f"{key} N={n}: bus <= django",
                    mine <= dj,
                    f"{fmt(mine)} vs {fmt(dj)} ({mine / dj:.2f}x)",
                )
            if mine and ga:
                add(
                    f"{key} N={n}: bus <= 1.3x gather",
                    mine <= 1.3 * ga,
                    f"{mine / ga:.2f}x gather ({fmt(ga)})",
                )
            summary = by_case.get(bus, {})
            if key != "s3_sync" and int(n) <= 100 and summary.get("median_s"):
                ratio = summary["p99_s"] / summary["median_s"]
                add(f"{key} N={n}: bus p99 <= 2x median", ratio <= 2.0, f"p99/median {ratio:.2f}")
    for n, by_case in (data.get("s3_sync") or {}).items():
        inline = by_case.get("lifecycle-bus inline=True", {}).get("median_s")
        floor = by_case.get(FLOOR, {}).get("median_s")
        if inline and floor:
            add(
                f"s3_sync N={n}: inline <= 3x plain loop",
                inline <= 3 * floor,
                f"{inline / floor:.2f}x",
            )
    for n, by_case in (data.get("s9_slow") or {}).items():
        mine = by_case.get(BUS, {}).get("median_s")
        ga = by_case.get(GATHER, {}).get("median_s")
        if mine and ga:
            add(
                f"s9_slow N={n}: bus <= 1.1x gather (issue 8)",
                mine <= 1.1 * ga,
                f"{fmt(mine)} vs {fmt(ga)} ({mine / ga:.2f}x)",
            )
    for n, by_case in (data.get("s10_labels") or {}).items():
        alone = by_case.get(MATCHING, {}).get("median_s")
        crowded = by_case.get(f"lifecycle-bus, 1 matching among {n}", {}).get("median_s")
        if alone and crowded:
            add(
                f"s10_labels N={n}: 1 matching among N within 1.2x of it alone (issue 8)",
                crowded <= 1.2 * alone,
                f"{fmt(crowded)} vs {fmt(alone)} ({crowded / alone:.2f}x)",
            )
    for key, results in (data.get("trio") or {}).items():
        if key not in ("async", "suspend", "slow"):
            continue
        for n, by_case in results.items():
            mine = by_case.get(BUS, {}).get("median_s")
            native = by_case.get(NATIVE_TRIO, {}).get("median_s")
            if mine and native:
                add(
                    f"trio {key} N={n}: bus <= 1.3x native trio (issue 8)",
                    mine <= 1.3 * native,
                    f"{fmt(mine)} vs {fmt(native)} ({mine / native:.2f}x)",
                )
    for n, by_case in (data.get("s4_background") or {}).items():
        mine = by_case.get(BUS, {}).get("median_s")
        base = by_case.get("create_task + set (baseline)", {}).get("median_s")
        if mine and base:
            add(
                f"s4_background N={n}: emit returns within task-creation time",
                mine <= base,
                f"{fmt(mine)} vs {fmt(base)} ({mine / base:.2f}x)",
            )
    for n, by_case in (data.get("s5_isolation") or {}).items():
        slow = by_case.get(BUS, {})
        for label, clean in (
            ("run without them, after the same 50 ms idle", by_case.get(f"{BUS}{IDLE_SUFFIX}", {})),
            ("run without them, back to back", by_case.get(f"{BUS} [no slow handlers]", {})),
        ):
            if slow.get("secondary_median_s") and clean.get("secondary_median_s"):
                ratio = slow["secondary_median_s"] / clean["secondary_median_s"]
                add(
                    f"s5_isolation N={n}: fast done within 1.5x the {label}",
                    ratio <= 1.5,
                    f"{fmt(slow['secondary_median_s'])} vs {fmt(clean['secondary_median_s'])}"
                    f" ({ratio:.2f}x)",
                )
        if slow.get("median_s"):
            late = slow["median_s"] - 0.05
            add(
                f"s5_isolation N={n}: emit returns within 20 ms of the 50 ms timeout",
                late <= 0.020,
                f"returned {fmt(slow['median_s'])} (p99 {fmt(slow['p99_s'])})",
            )
    return checks


def chart(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["s1_async", "s2_suspend", "s3_sync", "s4_background", "s6_environment"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    for ax, key in zip(axes.flat, keys, strict=False):
        results = data.get(key)
        if not results:
            ax.set_visible(False)
            continue
        sizes = [int(n) for n in results]
        for name in _case_names(results):
            ys = [results[n].get(name, {}).get("median_s") for n in results]
            points = [(x, y * 1e6) for x, y in zip(sizes, ys, strict=False) if y]
            if not points:
                continue
            style: dict[str, Any] = {"linewidth": 1.2}
            if name.startswith(BUS):
                style = {"linewidth": 3, "color": "black"}
                if "inline" in name or "2 emits" in name:
                    style["linestyle"] = "--"
            ax.plot(*zip(*points, strict=False), marker="o", label=name, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("handlers (N)")
        ax.set_ylabel("median per emit (us)")
        ax.set_title(TITLES[key].split(":")[0], fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes.flat[5]
    iso = data.get("s5_isolation") or {}
    if iso:
        # Wide pale bar: emit returned; narrow dark bar: the fast handlers were all done;
        # tick: fast handlers done in the same run without the two slow handlers.
        names = [name for name in _case_names(iso) if "[no slow" not in name]
        sizes = list(iso)
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            color = f"C{i}"
            xs = [j + i * width for j in range(len(sizes))]
            rows = [iso[n].get(name, {}) for n in sizes]
            clean = [iso[n].get(f"{name}{IDLE_SUFFIX}", {}) for n in sizes]
            returned = [(row.get("median_s") or 0) * 1e3 for row in rows]
            fast = [(row.get("secondary_median_s") or 0) * 1e3 for row in rows]
            alone = [(row.get("secondary_median_s") or 0) * 1e3 for row in clean]
            ax.bar(xs, returned, width, color=color, alpha=0.3, label=name)
            ax.bar(xs, fast, width * 0.5, color=color, alpha=1.0)
            ax.scatter(xs, alone, marker="_", s=200, color="black", zorder=3)
        ax.axhline(70, linestyle="--", color="red", linewidth=1, label="timeout 50 ms + 20 ms")
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"N={n}" for n in sizes])
        ax.set_ylabel("ms (log)")
        ax.set_title(
            "5. isolation: pale = emit returned, dark = fast handlers done,\n"
            "black tick = fast handlers done without the slow ones (after 50 ms idle)",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    else:
        ax.set_visible(False)
    meta = data.get("meta", {})
    fig.suptitle(
        f"lifecycle-bus dispatch benchmark - Python {meta.get('python', '?')}, "
        f"{meta.get('loop', '?')}, {meta.get('cpus', '?')} CPUs"
        + (" (quick run)" if meta.get("quick") else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
