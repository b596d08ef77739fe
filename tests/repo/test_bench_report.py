"""benchmarks/report.py computes its tables from the JSON (fed a small hand-made file here)."""

import json
import os
import re

import pytest

from benchmarks import report


def bench(group, provider, median, batch=128, saved=None, device="cpu"):
    return {
        "name": f"test[{provider}]",
        "group": group,
        "stats": {"median": median},
        "extra_info": {
            "op": "gromov_wasserstein",
            "provider": provider,
            "pass": "fwd",
            "size": f"B={batch} n=36",
            "batch": batch,
            "device": device,
            "dtype": "float32",
            "threads": 2,
            "saved_bytes": saved,
        },
    }


def write_run(path, benchmarks, gpu=None):
    path.write_text(
        json.dumps(
            {
                "machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU 9000"}, "helo_cuda_device": gpu},
                "commit_info": {"id": "abcdef1234567"},
                "benchmarks": benchmarks,
            }
        )
    )
    return str(path)


@pytest.fixture
def results(tmp_path):
    data = {
        "machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU 9000"}, "python_version": "3.11"},
        "commit_info": {"id": "abcdef1234567", "dirty": False},
        "datetime": "2026-11-24",
        "benchmarks": [
            bench("gw B=128 fwd", "reference", 0.020, saved=4 << 20),
            bench("gw B=128 fwd", "compile", 0.010),
            bench("gw B=128 fwd", "cpp", 0.001, saved=1 << 10),
            bench("gw B=1024 fwd", "reference", 0.160, batch=1024),
            bench("gw B=1024 fwd", "cpp", 0.004, batch=1024),
            {"name": "unrelated", "group": None, "stats": {"median": 1.0}, "extra_info": {}},
        ],
    }
    path = tmp_path / "in.json"
    path.write_text(json.dumps(data))
    return path


def test_table_ratios_come_from_the_json(results, tmp_path):
    rows = report.load_rows(json.loads(results.read_text()))
    assert len(rows) == 5
    table = report.speedup_table(report.group_rows(rows))
    assert "| gw B=128 fwd | cpp | 1 ms | 20.00x | 10.00x | – | 1 KiB |" in table
    assert "| gw B=128 fwd | reference | 20 ms | – | 0.50x | – | 4 MiB |" in table
    assert "| gw B=1024 fwd | cpp | 4 ms | 40.00x | – | – | – |" in table


def test_main_writes_report_plots_and_readme_block(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.SUMMARY_BEGIN}\nold\n{report.SUMMARY_END}\ntail\n")
    path = report.main([str(results), "--out-root", str(tmp_path / "out"), "--update-readme", str(readme)])
    assert os.path.dirname(path).endswith("cpu-test-cpu-9000-2t")
    text = open(path).read()
    assert "20.00x" in text and "commit abcdef1234" in text
    pngs = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".png")]
    assert "memory.png" in pngs and len(pngs) == 2
    new_readme = readme.read_text()
    # The README gets the summary (the B=128 row of the series), docs/performance.md every row and plot.
    assert "old" not in new_readme and "| gw B=128 fwd | 20 ms | cpp 1 ms | 20.00x | 10.00x | – |" in new_readme
    assert "40.00x" not in new_readme and new_readme.endswith("tail\n")
    assert "(docs/performance.md)" in new_readme
    doc = (tmp_path / "docs" / "performance.md").read_text()
    assert "| gw B=1024 fwd | cpp | 4 ms | 40.00x | – | – | – |" in doc and "20.00x" in doc
    for link in re.findall(r"\]\(([^)]+)\)", doc) + re.findall(r"`([^`]+REPORT.md)`", doc):
        assert (tmp_path / "docs" / link).resolve().exists(), link  # relative to the doc, every plot
    assert doc.count("![") == 2


def test_json_without_our_benchmarks_is_an_error(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit, match="no benchmark"):
        report.main([str(path), "--out-root", str(tmp_path)])


def test_runs_merge_and_a_gpu_run_fills_the_gpu_block(tmp_path):
    first = write_run(
        tmp_path / "a.json",
        [bench("gw B=128 fwd", "reference", 0.02, device="cuda"), bench("gw B=128 fwd", "cpp", 0.001, device="cuda")],
        gpu="Test GPU",
    )
    second = write_run(
        tmp_path / "b.json",
        [
            bench("gw B=4096 fwd", "reference", 0.5, 4096, device="cuda"),
            bench("gw B=4096 fwd", "cpp", 0.01, 4096, device="cuda"),
        ],
        gpu="Test GPU",
    )
    readme = tmp_path / "README.md"
    readme_text = f"{report.SUMMARY_BEGIN}\ncpu summary\n{report.SUMMARY_END}\n"
    readme.write_text(readme_text)
    doc = tmp_path / "perf.md"
    doc.write_text(f"{report.DOC_BEGIN}\ncpu\n{report.DOC_END}\n{report.DOC_GPU_BEGIN}\nold\n{report.DOC_GPU_END}\n")
    path = report.main(
        [
            first,
            second,
            "--out-root",
            str(tmp_path / "out"),
            "--update-readme",
            str(readme),
            "--performance-doc",
            str(doc),
            "--no-plots",
        ]
    )
    assert os.path.dirname(path).endswith("test-gpu")
    text = doc.read_text()
    assert "cpu" in text and "old" not in text and "20.00x" in text and "50.00x" in text
    assert readme.read_text() == readme_text  # the README summarises the CPU run only


def test_a_file_without_its_block_is_an_error(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="performance-summary:begin"):
        report.main([str(results), "--out-root", str(tmp_path / "out"), "--update-readme", str(readme), "--no-plots"])
    doc = tmp_path / "docs" / "performance.md"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="performance:begin"):
        report.main([str(results), "--out-root", str(tmp_path / "out"), "--update-readme", str(readme), "--no-plots"])


def test_summary_has_one_row_per_series_at_most_summary_rows(tmp_path):
    benchmarks = []
    for i in range(report.SUMMARY_ROWS + 3):
        for batch in (128, 1024):
            group = f"op{i:02d} B={batch} fwd"
            benchmarks += [
                dict(
                    bench(group, "reference", 0.010, batch),
                    extra_info={**bench(group, "reference", 0.010, batch)["extra_info"], "op": f"op{i:02d}"},
                ),
                dict(
                    bench(group, "cpp", 0.002, batch),
                    extra_info={**bench(group, "cpp", 0.002, batch)["extra_info"], "op": f"op{i:02d}"},
                ),
            ]
    path = write_run(tmp_path / "a.json", benchmarks)
    table, left_out = report.summary_table(report.group_rows(report.load_rows(json.loads(open(path).read()))))
    rows = table.splitlines()[2:]
    assert len(rows) == report.SUMMARY_ROWS and left_out == 3
    assert all("B=128" in row and "5.00x" in row for row in rows)
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.SUMMARY_BEGIN}\n{report.SUMMARY_END}\n")
    report.main([path, "--out-root", str(tmp_path / "out"), "--update-readme", str(readme), "--no-plots"])
    text = readme.read_text()
    assert text.count("| op") == report.SUMMARY_ROWS and "3 more benchmarks in" in text


def test_summary_row_is_the_fastest_fused_provider_in_float32_against_the_best_peer(tmp_path):
    def row(provider, median, precision="32", batch=128):
        entry = bench(f"attn B={batch} fwd", provider, median, batch)
        entry["extra_info"]["precision"] = precision
        return entry

    path = write_run(
        tmp_path / "a.json",
        [
            row("reference", 0.040),
            row("compile", 0.020),
            row("sdpa", 0.030),
            row("torch_dropout", 0.025),
            row("cpp", 0.010),
            row("triton", 0.008),
            row("cpp", 0.001, "bf16-mixed"),
            row("reference", 0.040, batch=64),
            row("cpp", 0.001, batch=64),
        ],
    )
    table, left_out = report.summary_table(report.group_rows(report.load_rows(json.loads(open(path).read()))))
    assert left_out == 0
    assert table.splitlines()[2:] == [
        "| attn B=128 fwd | 40 ms | triton 8 ms | 5.00x | 2.50x | 3.12x (torch_dropout) |"
    ]


def test_a_group_split_across_runs_is_an_error(tmp_path):
    first = write_run(tmp_path / "a.json", [bench("gw B=128 fwd", "reference", 0.02)])
    second = write_run(tmp_path / "b.json", [bench("gw B=128 fwd", "cpp", 0.001)])
    with pytest.raises(SystemExit, match="ratios must come from one run"):
        report.main([first, second, "--out-root", str(tmp_path / "out"), "--no-plots"])


def test_mixed_precision_providers_are_labelled_and_compared_with_the_reference_in_their_precision(tmp_path):
    def step(provider, median, precision):
        row = bench("step B=128", provider, median)
        row["extra_info"]["precision"] = precision
        return row

    path = write_run(
        tmp_path / "a.json",
        [
            step("cpp", 0.030, "bf16-mixed"),
            step("reference", 0.170, "32"),
            step("reference", 0.120, "bf16-mixed"),
            step("cpp", 0.085, "32"),
        ],
    )
    rows = report.load_rows(json.loads(open(path).read()))
    groups = report.group_rows(rows)
    assert report._ordered(groups["step B=128"]) == ["reference", "reference bf16-mixed", "cpp", "cpp bf16-mixed"]
    table = report.speedup_table(groups)
    assert "| step B=128 | cpp bf16-mixed | 30 ms | 5.67x | – | 4.00x (reference bf16-mixed) | – |" in table
    assert "| step B=128 | reference bf16-mixed | 120 ms | 1.42x | – | – | – |" in table


def test_results_json_is_compact_and_a_later_run_replaces_its_groups(results, tmp_path):
    data = json.loads(results.read_text())
    for row in data["benchmarks"]:
        row["stats"]["data"] = [0.1] * 1000  # pytest-benchmark's per-round timings
    data["machine_info"]["cpu"]["flags"] = ["avx2"] * 100
    results.write_text(json.dumps(data))
    out = tmp_path / "out"
    report_path = report.main([str(results), "--out-root", str(out), "--no-plots"])
    saved = os.path.join(os.path.dirname(report_path), "results.json")
    text = open(saved).read()
    assert '"data"' not in text and "flags" not in text and len(text.splitlines()) < 40
    newer = write_run(
        tmp_path / "b.json", [bench("gw B=128 fwd", "reference", 0.030), bench("gw B=128 fwd", "cpp", 0.002)]
    )
    with pytest.raises(SystemExit, match="ratios must come from one run"):
        report.main([saved, newer, "--out-root", str(out), "--no-plots"])
    report.main([saved, newer, "--out-root", str(out), "--no-plots", "--replace-groups"])
    table = open(report_path).read()
    assert "| gw B=128 fwd | cpp | 2 ms | 15.00x |" in table and "| gw B=128 fwd | compile |" not in table
    assert "| gw B=1024 fwd | cpp | 4 ms | 40.00x |" in table  # the group the newer run did not measure stays


def test_compile_first_call_is_shown_apart_from_its_median(tmp_path):
    compiled = bench("step B=128", "compile", 0.150)
    compiled["extra_info"]["first_call_s"] = 56.04
    eager = bench("step B=128", "reference", 0.300)
    eager["extra_info"]["first_call_s"] = 0.4  # only the compile provider's is shown
    table = report.speedup_table(report.group_rows(report.load_rows({"benchmarks": [compiled, eager]})))
    assert re.search(r"\| compile \| 150 ms \(first call 56\.0 s\) \| 2\.00x \|", table), table
    assert "first call 0.4" not in table


def tier_doc(compile_first_call=None):
    """A cpu_tiers --json document: one tier, one case, three rounds (cpp twice as fast as eager in each)."""
    providers = {
        "reference": {"median_s": 0.004, "first_call_s": 0.01, "samples_s": [0.004, 0.004, 0.006]},
        "cpp": {"median_s": 0.002, "first_call_s": 0.01, "samples_s": [0.002, 0.002, 0.003]},
    }
    if compile_first_call is not None:
        providers["compile"] = {"median_s": 0.003, "first_call_s": compile_first_call, "samples_s": [0.003] * 3}
    return {
        "cpu": "Test CPU 9000",
        "threads": 2,
        "batch": 128,
        "torch_capped": True,
        "load_before_after": [0.5, 0.75],
        "results": {"avx2": {"ca p=0.0": providers}},
    }


def test_cpu_tiers_render_names_the_cpu_and_gives_per_round_ratios():
    from benchmarks import cpu_tiers

    text = cpu_tiers.render(tier_doc(compile_first_call=61.0))
    assert text.startswith("CPU: Test CPU 9000; threads 2; B=128; PyTorch capped at each tier")
    assert "| avx2 | ca p=0.0 | 4.00 | 3.00 | 2.00 | 2.00x | 1.50x |" in text
    assert "- avx2 ca p=0.0: torch.compile first call 61.0 s" in text
    assert "compile first call" not in cpu_tiers.render(tier_doc())


def test_cpu_tiers_doc_block_is_replaced_between_its_markers(tmp_path):
    from benchmarks import cpu_tiers

    doc = tmp_path / "perf.md"
    begin = cpu_tiers.DOC_BEGIN.format(path="r.json")
    doc.write_text(f"intro\n{begin}\nold table\n{cpu_tiers.DOC_END}\noutro\n")
    cpu_tiers.update_doc_block(str(doc), "r.json", "new table")
    assert doc.read_text() == f"intro\n{begin}\nnew table\n{cpu_tiers.DOC_END}\noutro\n"


def test_docs_cpu_tier_tables_are_the_committed_runs_rendered():
    """Every generated per-tier table in docs/performance.md is exactly its JSON rendered (no hand edits, no drift)."""
    from benchmarks import cpu_tiers

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "performance.md")) as f:
        markdown = f.read()
    paths = re.findall(re.escape(cpu_tiers.DOC_BEGIN).replace(r"\{path\}", "(.+?)"), markdown)
    assert paths, "docs/performance.md has no table generated by benchmarks/cpu_tiers.py --render"
    for path in paths:
        with open(os.path.join(root, path)) as f:
            expected = cpu_tiers.render(json.load(f))
        start, end = cpu_tiers.doc_block(markdown, path)
        assert markdown[start:end] == expected + "\n", f"docs/performance.md's table for {path} is not its render"


def test_cpu_tiers_refuses_an_existing_output_before_running(tmp_path, capsys):
    from benchmarks import cpu_tiers

    existing = tmp_path / "run.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cpu_tiers.main(["--json", str(existing), "--tiers", "avx512"])
    assert exit_info.value.code == 2 and "exists" in capsys.readouterr().err
    assert existing.read_text() == "{}"
