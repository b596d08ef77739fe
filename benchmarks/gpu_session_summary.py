"""The compact end of benchmarks/gpu_session.sh: pass / fail per test file with the failing ids (from the phases'
JUnit XML) and the median of every benchmark (from pytest-benchmark's JSON), within a character budget.

Usage: python -m benchmarks.gpu_session_summary OUT_DIR [--limit 12000]. Reads OUT_DIR/*.xml, OUT_DIR/*.json and
OUT_DIR/phases.tsv (phase, exit code, seconds, written by the script); anything cut for the budget says so.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET


def test_lines(xml_path: str) -> list[str]:
    """'file: N passed, M failed, K skipped' and the failing ids, per test file of one JUnit XML."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        return [f"  (unreadable {os.path.basename(xml_path)}: {exc})"]
    counts = collections.defaultdict(collections.Counter)
    failing = collections.defaultdict(list)
    for case in root.iter("testcase"):
        file = case.get("file") or case.get("classname", "?").replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[file][outcome] += 1
        if outcome == "failed":
            failing[file].append(case.get("name", "?"))
    lines = []
    for file in sorted(counts):
        c = counts[file]
        verdict = "FAIL" if c["failed"] else "ok"
        lines.append(f"  {verdict:<4} {file}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
        lines.extend(f"       {name}" for name in failing[file])
    return lines or ["  (no test cases recorded)"]


def bench_lines(json_path: str) -> list[str]:
    """'group provider: median ms' per benchmark of one pytest-benchmark JSON."""
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        return [f"  (unreadable {os.path.basename(json_path)}: {exc})"]
    lines = []
    for bench in data.get("benchmarks", []):
        provider = bench.get("extra_info", {}).get("provider", "?")
        median = bench.get("stats", {}).get("median")
        value = f"{median * 1e3:.3f} ms" if isinstance(median, (int, float)) else "-"
        lines.append(f"  {bench.get('group') or bench.get('name')} [{provider}]: {value}")
    return lines or ["  (no benchmark finished)"]


def summary(out_dir: str, limit: int) -> str:
    lines = ["=== summary"]
    phases_path = os.path.join(out_dir, "phases.tsv")
    if os.path.exists(phases_path):
        with open(phases_path) as f:
            for row in f:
                name, rc, seconds = (row.rstrip("\n").split("\t") + ["", "", ""])[:3]
                state = {"0": "ok", "124": "TIMEOUT", "137": "TIMEOUT (killed)"}.get(rc, f"exit {rc}")
                lines.append(f"phase {name}: {state} after {seconds}s")
    for path in sorted(glob.glob(os.path.join(out_dir, "*.xml"))):
        lines.append(f"tests {os.path.basename(path)[:-4]}:")
        lines.extend(test_lines(path))
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        lines.append(f"benchmarks {os.path.basename(path)[:-5]} (median):")
        lines.extend(bench_lines(path))
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    note = f"\n... cut at {limit} characters: the full logs, XML and JSON are in {out_dir}"
    return text[: limit - len(note)] + note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--limit", type=int, default=12000)
    args = parser.parse_args(argv)
    print(summary(args.out_dir, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
