"""Turn pytest-benchmark JSON into benchmarks/results/<machine>/REPORT.md, PNG plots and the docs' tables.

    python -m benchmarks.report benchmarks/results/latest.json [--out-root benchmarks/results]
        [--update-readme README.md]
    python -m benchmarks.report benchmarks/results/<machine>/results.json new.json --replace-groups ...

Tables: median time per provider for each benchmark group, and the speed-up of each provider over
reference eager (and over torch.compile(reference) and the peers, where they ran in the same run).
A provider measured in a mixed precision (extra_info "precision", e.g. "bf16-mixed") is shown as
"<provider> <precision>", and the reference in that precision is one of its peers.
Every number comes from the JSON; nothing is typed in. The machine's ``results.json`` keeps the
summary statistics of each benchmark (not pytest-benchmark's per-round timings), so a later run of
some suites can be merged into it with ``--replace-groups``.

``--update-readme README.md`` writes the full table and every plot into ``docs/performance.md`` (next to the
README; ``--performance-doc`` picks another file), in its CPU or GPU block, and for a CPU run a summary of at
most ``SUMMARY_ROWS`` rows into the README's summary block.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

PROVIDER_ORDER = ["reference", "compile", "pot", "pot_batch", "sdpa", "torch_dropout", "io_floor", "cpp", "triton"]
# Independent implementations (and the memory-traffic floor) each row is also compared with, beside
# reference and compile.
PEERS = ["pot", "pot_batch", "sdpa", "torch_dropout", "io_floor"]
# Blocks the report fills. docs/performance.md: the full table and plots of a CPU run and of a GPU run (so both
# stay). README: the summary of a CPU run.
DOC_BEGIN, DOC_END = "<!-- performance:begin -->", "<!-- performance:end -->"
DOC_GPU_BEGIN, DOC_GPU_END = "<!-- performance-gpu:begin -->", "<!-- performance-gpu:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- performance-summary:begin -->", "<!-- performance-summary:end -->"
# The README summary: one row per benchmark series (op, shape, pass) at HeLo's training batch when measured,
# at most this many rows.
SUMMARY_ROWS = 15
SUMMARY_BATCH = 128
# The fused implementations a summary row reports (the fastest of them, in full precision).
FAST_PROVIDERS = ["cpp", "triton"]


def provider_label(info: dict) -> str:
    """The provider, with its precision when that is not full precision ("cpp bf16-mixed")."""
    precision = info.get("precision", "32")
    return info["provider"] if precision == "32" else f"{info['provider']} {precision}"


def load_rows(data: dict) -> List[dict]:
    """One row per benchmark: op, provider, pass, size, batch, device, median (s), memory fields, first call (s)."""
    rows = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "provider" not in info:
            continue
        rows.append(
            {
                "group": bench.get("group") or bench["name"],
                "op": info.get("op", "?"),
                "provider": provider_label(info),
                "pass": info.get("pass", "fwd"),
                "size": info.get("size", ""),
                "batch": info.get("batch"),
                "device": info.get("device", "cpu"),
                "dtype": info.get("dtype", ""),
                "median": bench["stats"]["median"],
                "saved_bytes": info.get("saved_bytes"),
                "cuda_peak_bytes": info.get("cuda_peak_bytes"),
                "first_call_s": info.get("first_call_s"),
            }
        )
    return rows


def ran_on_cuda(rows: List[dict]) -> bool:
    """True when any benchmark ran on a CUDA device."""
    return any(row["device"].startswith("cuda") for row in rows)


def machine_name(data: dict, rows: List[dict]) -> str:
    """A folder name for the machine: the GPU name on CUDA runs, else the CPU brand and thread count."""
    info = data.get("machine_info", {})
    if ran_on_cuda(rows) and info.get("helo_cuda_device"):
        label = info["helo_cuda_device"]
    else:
        cpu = info.get("cpu", {}) or {}
        label = f"cpu-{cpu.get('brand_raw') or info.get('processor') or 'unknown'}-{_threads(data)}t"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-").lower()


def _threads(data: dict) -> str:
    for bench in data.get("benchmarks", []):
        if "threads" in bench.get("extra_info", {}):
            return str(bench["extra_info"]["threads"])
    return "?"


def format_time(seconds: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "–"
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


def group_rows(rows: List[dict]) -> Dict[str, Dict[str, dict]]:
    """group -> provider -> row (providers in PROVIDER_ORDER first)."""
    groups: Dict[str, Dict[str, dict]] = defaultdict(dict)
    for row in rows:
        groups[row["group"]][row["provider"]] = row
    return groups


def _ordered(providers) -> List[str]:
    """PROVIDER_ORDER, each provider's mixed-precision variants right after it, unknown providers last."""

    def key(label):
        base, _, precision = label.partition(" ")
        rank = PROVIDER_ORDER.index(base) if base in PROVIDER_ORDER else len(PROVIDER_ORDER)
        return rank, base, precision

    return sorted(providers, key=key)


def _peers(providers) -> List[str]:
    """The peers of a group: PEERS, and the reference in each mixed precision measured."""
    return [p for p in PEERS if p in providers] + sorted(p for p in providers if p.startswith("reference "))


def speedup_table(groups: Dict[str, Dict[str, dict]]) -> str:
    """Markdown: per group, each provider's median and its speed-up over every baseline present."""
    lines = [
        "| benchmark | provider | median | vs reference | vs compile | vs peer | saved for backward |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in sorted(groups):
        by_provider = groups[group]
        peers = _peers(by_provider)
        for provider in _ordered(by_provider):
            row = by_provider[provider]

            def ratio(base):
                if base not in by_provider or base == provider:
                    return "–"
                return f"{by_provider[base]['median'] / row['median']:.2f}x"

            peer = ", ".join(f"{ratio(p)} ({p})" for p in peers if p != provider) or "–"
            memory = row["saved_bytes"] if row["saved_bytes"] is not None else row["cuda_peak_bytes"]
            # torch.compile's first call (the compile) is shown apart from its steady median.
            first = row.get("first_call_s")
            median = format_time(row["median"]) + (
                f" (first call {first:.1f} s)" if provider == "compile" and first is not None else ""
            )
            lines.append(
                f"| {group} | {provider} | {median} | {ratio('reference')} | "
                f"{ratio('compile')} | {peer} | {format_bytes(memory)} |"
            )
    return "\n".join(lines)


def _series_key(row: dict) -> str:
    """The group without its batch size, so one plot shows time against B."""
    return re.sub(r"\s*B=\d+", "", f"{row['op']} {row['size']} {row['pass']}").strip()


def make_plots(rows: List[dict], out_dir: str) -> List[str]:
    """Time vs batch size per provider (log-log), one PNG per op/shape/pass; a memory bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    series: Dict[str, Dict[str, List[tuple]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["batch"] is not None:
            series[_series_key(row)][row["provider"]].append((row["batch"], row["median"]))
    for key, by_provider in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for provider in _ordered(by_provider):
            points = sorted(by_provider[provider])
            ax.plot([p[0] for p in points], [p[1] * 1e3 for p in points], marker="o", label=provider)
        ax.set_xscale("log")
        ax.set_yscale("log")
        batches = sorted({p[0] for points in by_provider.values() for p in points})
        ax.set_xticks(batches, [str(b) for b in batches])  # label the measured sizes only
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("batch size B")
        ax.set_ylabel("median time (ms)")
        ax.set_title(key)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    memory_rows = [r for r in rows if (r["saved_bytes"] or r["cuda_peak_bytes"])]
    if memory_rows:
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(memory_rows))))
        labels = [f"{r['group']} [{r['provider']}]" for r in memory_rows]
        values = [(r["saved_bytes"] or r["cuda_peak_bytes"]) / 2**20 for r in memory_rows]
        ax.barh(labels, values)
        ax.set_xscale("log")
        ax.set_xlabel("MiB saved for backward (CPU) / peak (CUDA)")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def run_label(data: dict) -> str:
    """ "<datetime>, commit <id>" of a pytest-benchmark run."""
    commit = data.get("commit_info", {})
    return (
        f"{data.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:10]}"
        f"{' (dirty)' if commit.get('dirty') else ''}"
    )


def compact(data: dict) -> dict:
    """The run without pytest-benchmark's per-round timings and CPU flag list (what results.json keeps); each
    benchmark is tagged with its run ("run": datetime and commit), so merged files still say where a group is from."""
    stats_kept = ("min", "max", "mean", "stddev", "median", "iqr", "rounds", "iterations")
    info = {k: v for k, v in data.get("machine_info", {}).items() if k != "cpu"}
    info["cpu"] = {k: v for k, v in (data.get("machine_info", {}).get("cpu") or {}).items() if k != "flags"}
    benchmarks = [
        {
            "group": b.get("group"),
            "name": b.get("name"),
            "extra_info": b.get("extra_info", {}),
            "stats": {k: v for k, v in b.get("stats", {}).items() if k in stats_kept},
            "run": b.get("run") or run_label(data),
        }
        for b in data.get("benchmarks", [])
    ]
    return {
        "machine_info": info,
        "commit_info": data.get("commit_info", {}),
        "datetime": data.get("datetime"),
        "benchmarks": benchmarks,
    }


def render_report(data: dict, rows: List[dict], plots: List[str], out_dir: str) -> str:
    info = data.get("machine_info", {})
    cpu = (info.get("cpu") or {}).get("brand_raw", info.get("processor", "?"))
    runs = sorted({b.get("run") or run_label(data) for b in data.get("benchmarks", [])})
    header = [
        "# helo_fast benchmark report",
        "",
        f"Generated by `python -m benchmarks.report` from pytest-benchmark JSON: {'; '.join(runs)}.",
        f"Machine: {info.get('node', '?')}, CPU {cpu}, threads {_threads(data)}, "
        f"GPU {info.get('helo_cuda_device') or 'none'}; python {info.get('python_version', '?')}, "
        f"torch {info.get('helo_torch', '?')}, triton {info.get('helo_triton', '?')}.",
        "",
        "Speed-ups are ratios of medians measured in the same run (> 1 means faster than the baseline).",
        "",
        speedup_table(group_rows(rows)),
        "",
    ]
    header += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})" for p in plots]
    return "\n".join(header) + "\n"


def summary_table(groups: Dict[str, Dict[str, dict]], limit: int = SUMMARY_ROWS) -> Tuple[str, int]:
    """Markdown: one row per series (a group without its batch size) at ``SUMMARY_BATCH`` (else the smallest batch
    measured): the reference's median, the fastest of ``FAST_PROVIDERS`` in full precision and its speed-ups.
    At most ``limit`` rows, in group order; returns the table and the number of series left out."""
    chosen: Dict[str, Tuple[Tuple[int, int], str]] = {}
    for group, by_provider in groups.items():
        if not any(p in by_provider for p in FAST_PROVIDERS):
            continue
        row = next(iter(by_provider.values()))
        batch = row["batch"] if row["batch"] is not None else 0
        rank = (0 if batch == SUMMARY_BATCH else 1, batch)
        key = _series_key(row)
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, group)
    picked = sorted(group for _, group in chosen.values())
    lines = ["| benchmark | reference | fastest | vs reference | vs compile | vs peer |", "|---|---|---|---|---|---|"]
    for group in picked[:limit]:
        by_provider = groups[group]
        fast = min((p for p in FAST_PROVIDERS if p in by_provider), key=lambda p: by_provider[p]["median"])
        median = by_provider[fast]["median"]

        def ratio(base):
            return f"{by_provider[base]['median'] / median:.2f}x" if base in by_provider else "–"

        peers = [p for p in PEERS if p in by_provider]
        best_peer = min(peers, key=lambda p: by_provider[p]["median"]) if peers else None
        reference = format_time(by_provider["reference"]["median"]) if "reference" in by_provider else "–"
        lines.append(
            f"| {group} | {reference} | {fast} {format_time(median)} | {ratio('reference')} | "
            f"{ratio('compile')} | {f'{ratio(best_peer)} ({best_peer})' if best_peer else '–'} |"
        )
    return "\n".join(lines), max(0, len(picked) - limit)


def replace_block(path: str, begin: str, end_marker: str, body: List[str]) -> None:
    """Replace the text between the markers ``begin`` ... ``end_marker`` of ``path`` (both kept) with ``body``."""
    with open(path) as fh:
        text = fh.read()
    if begin not in text or end_marker not in text:
        raise ValueError(f"{path} has no {begin} ... {end_marker} block to update")
    start, end = text.index(begin), text.index(end_marker) + len(end_marker)
    with open(path, "w") as fh:
        fh.write(text[:start] + "\n".join([begin, *body, end_marker]) + text[end:])


def _new_performance_doc(path: str) -> None:
    """A docs/performance.md with empty CPU and GPU blocks, for a tree that has none yet."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(
            f"# Performance\n\n## On a CPU\n\n{DOC_BEGIN}\n{DOC_END}\n\n## On a GPU\n\n{DOC_GPU_BEGIN}\n{DOC_GPU_END}\n"
        )


def update_docs(
    readme: str, doc: str, report_path: str, groups: Dict[str, Dict[str, dict]], plots: List[str], gpu: bool = False
) -> None:
    """Write the full table and every plot into ``doc``'s CPU block (its GPU block for a GPU run), and for a CPU
    run the summary into ``readme``'s summary block. Links are relative to the file they are written in."""
    if not os.path.exists(doc):
        _new_performance_doc(doc)
    doc_dir = os.path.dirname(os.path.abspath(doc))
    source = f"Generated from `{os.path.relpath(report_path, doc_dir)}` by `python -m benchmarks.report`."
    body = [source, "", speedup_table(groups), ""]
    body += [f"![{os.path.basename(p)}]({os.path.relpath(p, doc_dir)})" for p in plots]
    replace_block(doc, *((DOC_GPU_BEGIN, DOC_GPU_END) if gpu else (DOC_BEGIN, DOC_END)), body)
    if gpu:
        return
    root = os.path.dirname(os.path.abspath(readme))
    table, left_out = summary_table(groups)
    doc_link = os.path.relpath(doc, root)
    body = [
        f"Generated from `{os.path.relpath(report_path, root)}` by `python -m benchmarks.report`:",
        f"one row per benchmark at B={SUMMARY_BATCH} (else its smallest B), the fastest of "
        f"{'/'.join(FAST_PROVIDERS)} in float32;",
        f"every provider, batch size and precision in [{doc_link}]({doc_link}).",
        "",
        table,
    ]
    if left_out:
        body += ["", f"{left_out} more benchmarks in [{doc_link}]({doc_link})."]
    replace_block(readme, SUMMARY_BEGIN, SUMMARY_END, body)


def write_results(data: dict, path: str) -> None:
    """``data`` (compact) as JSON with one line per benchmark: small, and a re-run changes only its own lines."""
    head = json.dumps({**{k: v for k, v in data.items() if k != "benchmarks"}, "benchmarks": []}, indent=1)
    lines = ",\n".join("  " + json.dumps(bench, sort_keys=True) for bench in data["benchmarks"])
    with open(path, "w") as fh:
        fh.write(head.replace('"benchmarks": []', '"benchmarks": [\n' + lines + "\n ]") + "\n")


def merge_runs(paths: List[str], replace_groups: bool = False) -> dict:
    """One document (compact, see ``compact``) from several runs on one machine (machine info of the first).

    A group (the unit every ratio is taken in) must come whole from one run: a group found in two files
    is an error, so no ratio ever compares timings of different runs; with ``replace_groups`` a later
    file's group replaces the earlier one whole instead (to update some suites of a machine's results.json)."""
    merged, owner = None, {}
    for path in paths:
        with open(path) as fh:
            data = compact(json.load(fh))
        groups = {bench.get("group") for bench in data["benchmarks"]}
        for group in groups:
            if group in owner and not replace_groups:
                raise SystemExit(f"group {group!r} is in both {owner[group]} and {path}: ratios must come from one run")
            owner[group] = path
        if merged is None:
            merged = data
        else:
            kept = [b for b in merged["benchmarks"] if b.get("group") not in groups]
            merged["benchmarks"] = kept + data["benchmarks"]
    return merged


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "json_paths",
        nargs="+",
        metavar="json_path",
        help="pytest-benchmark JSON files of one machine (several runs are merged)",
    )
    parser.add_argument("--out-root", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument(
        "--update-readme",
        metavar="README",
        default=None,
        help="write the tables into docs/performance.md and the summary into this README",
    )
    parser.add_argument(
        "--performance-doc",
        metavar="PATH",
        default=None,
        help="the file for the full tables (default: docs/performance.md next to the README)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--replace-groups",
        action="store_true",
        help="a group in a later file replaces that group of the earlier ones (else: an error)",
    )
    args = parser.parse_args(argv)
    data = merge_runs(args.json_paths, args.replace_groups)
    rows = load_rows(data)
    if not rows:
        raise SystemExit(f"{', '.join(args.json_paths)}: no benchmark with extra_info['provider'] found")
    out_dir = os.path.join(args.out_root, machine_name(data, rows))
    os.makedirs(out_dir, exist_ok=True)
    write_results(data, os.path.join(out_dir, "results.json"))
    plots = [] if args.no_plots else make_plots(rows, out_dir)
    report_path = os.path.join(out_dir, "REPORT.md")
    with open(report_path, "w") as fh:
        fh.write(render_report(data, rows, plots, out_dir))
    if args.update_readme:
        doc = args.performance_doc or os.path.join(
            os.path.dirname(os.path.abspath(args.update_readme)), "docs", "performance.md"
        )
        update_docs(args.update_readme, doc, report_path, group_rows(rows), plots, gpu=ran_on_cuda(rows))
    print(f"wrote {report_path} ({len(rows)} benchmarks, {len(plots)} plots)")
    return report_path


if __name__ == "__main__":
    main()
