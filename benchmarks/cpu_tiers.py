"""lcd_attention and the HeLo training step on every CPU instruction-set tier of this machine, in one run.

    .venv/bin/python -m benchmarks.cpu_tiers [--tiers avx512,avx2,default] [--compile] [--rounds N]

Each tier runs in its own interpreter (``HELO_FAST_CPU_ISA`` is read once per process; PyTorch's own kernels and
BLAS are capped at the same tier, see TORCH_CAPS), which times the eager reference, torch.compile(reference) (with
``--compile``; its first call, compile included, is reported apart) and
the C++ kernels, interleaved round by round so that a load change on a shared machine hits every provider alike;
the table gives medians and the ratios to eager and compiled within each tier. float32, 2 threads
(HELO_BENCH_THREADS), B=128 (--batch), forward+backward with DropKey/dropout at 0 and at HeLo's 0.5; the step
is forward, backward and fused Adam of the default config. Speed is measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

TIERS = ("avx512", "avx2", "default")
STEP_SHAPE = "step"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def attention_case(shape: str, p: float, batch: int, provider: str):
    """A no-argument callable running lcd_attention forward+backward at ``shape`` (benchmarks.test_bench_lcd_
    attention.SHAPES) with DropKey = dropout = ``p`` for ``provider`` (reference | compile | cpp)."""
    import torch

    import helo_fast as hf
    from helo_fast import reference

    from .test_bench_lcd_attention import SHAPES, make_inputs

    inputs = make_inputs(shape, batch, torch.device("cpu"), requires_grad=True)
    bias_before_scale = SHAPES[shape][5]
    kwargs = dict(
        bias_before_scale=bias_before_scale,
        dropkey_p=p,
        dropout_p=p,
        check_finite=False,
        residual=inputs["residual"],
        ln_weight=inputs["ln_weight"],
        ln_bias=inputs["ln_bias"],
    )
    if provider == "cpp":

        def fn(q, k, v, bias):
            return hf.lcd_attention(q, k, v, bias, backend="cpp", **kwargs)
    else:
        fn = lambda q, k, v, bias: reference.lcd_attention(q, k, v, bias, **kwargs)  # noqa: E731
        if provider == "compile":
            torch._dynamo.reset()
            fn = torch.compile(fn)
    q = inputs["q"]
    grad = torch.randn(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])
    leaves = [t for t in inputs.values() if t is not None]

    def step():
        for t in leaves:
            t.grad = None
        fn(inputs["q"], inputs["k"], inputs["v"], inputs["bias"]).backward(grad)

    return step


def step_case(batch: int, provider: str):
    """A no-argument callable running one HeLo training step (forward, backward, fused Adam) for ``provider``."""
    import torch

    from helo_fast.models import HeLo, HeLoConfig
    from helo_fast.cli.step_timing import synthetic_batch
    from helo_fast.training.step import make_optimizer, train_step

    config = HeLoConfig()
    torch.manual_seed(0)
    model = HeLo(config, backend="auto" if provider == "cpp" else "reference", mask_seed=0).train()
    optimizer = make_optimizer(model)
    x, y = synthetic_batch(config, batch)
    if provider == "compile":
        torch._dynamo.reset()
        # dynamic=False as in benchmarks/test_bench_model.py (symbolic shapes break inductor's mask-hash code).
        stepped = torch.compile(model, dynamic=False)
    else:
        stepped = model
    return lambda: train_step(stepped, optimizer, x, y)


def time_worker(args) -> dict:
    """Medians (seconds) per case and provider under this process's tier, interleaving the providers."""
    import torch

    torch.set_num_threads(int(os.environ.get("HELO_BENCH_THREADS", "2")))
    providers = ["reference", "cpp"] + (["compile"] if args.compile else [])
    cases = [(shape, p) for shape in args.shapes for p in args.p] + ([(STEP_SHAPE, 0.5)] if args.step else [])
    results = {}
    for shape, p in cases:
        print(f"{shape} p={p}", file=sys.stderr, flush=True)
        fns, first_call = {}, {}
        for provider in providers:
            fn = (
                step_case(args.batch, provider)
                if shape == STEP_SHAPE
                else attention_case(shape, p, args.batch, provider)
            )
            tic = time.perf_counter()
            fn()
            first_call[provider] = time.perf_counter() - tic
            for _ in range(2):
                fn()
            fns[provider] = fn
        reps = 1 if shape == STEP_SHAPE else args.reps
        times = {provider: [] for provider in providers}
        for round_ in range(args.rounds):
            for provider in providers[round_ % len(providers) :] + providers[: round_ % len(providers)]:
                tic = time.perf_counter()
                for _ in range(reps):
                    fns[provider]()
                times[provider].append((time.perf_counter() - tic) / reps)
        results[STEP_SHAPE if shape == STEP_SHAPE else f"{shape} p={p}"] = {
            provider: {"median_s": statistics.median(t), "first_call_s": first_call[provider], "samples_s": t}
            for provider, t in times.items()
        }
    return results


# What a CPU of each tier runs in PyTorch, so that a narrower tier's kernels are compared with the eager and compiled
# reference as that CPU would run them, not with AVX-512 code (--uncapped-torch: left alone): ATen's own kernels
# (softmax, LayerNorm, element-wise; ATEN_CPU_CAPABILITY, which inductor's generated code follows too) and MKL's
# matmuls (MKL_ENABLE_INSTRUCTIONS). MKL ignores the latter on an AMD EPYC (Zen 5): its AVX2 kernels ran on every tier
# there, so on such a CPU eager's matmuls are faster than a CPU of the tier would run them (conservative ratios).
# MKL_CBWR=COMPATIBLE, which does slow MKL down there, is not used: a 20x slower eager step is not what an SSE4.2
# CPU would see.
TORCH_CAPS = {
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "default": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"},
}


def run_tier(tier: str, argv: list, cap_torch: bool) -> dict:
    """time_worker's results in a fresh interpreter capped at ``tier`` (PyTorch too with ``cap_torch``)."""
    with tempfile.TemporaryDirectory(prefix=f"helo_fast_inductor_{tier}_") as cache_dir:
        return _run_tier_in(tier, argv, cap_torch, cache_dir)


def _run_tier_in(tier: str, argv: list, cap_torch: bool, cache_dir: str) -> dict:
    env = dict(os.environ)
    env.pop("HELO_FAST_CPU_ISA", None)
    # A fresh inductor cache per tier: torch 2.13's cache key omits ATEN_CPU_CAPABILITY, so a kernel compiled for
    # one tier was reused by another (wrong maxima under avx2, a SIGSEGV under default, on this CPU).
    env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    if tier != "avx512":
        env["HELO_FAST_CPU_ISA"] = tier
        if cap_torch:
            env.update(TORCH_CAPS[tier])
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_tiers", "--worker", *argv], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"tier {tier} failed (exit {out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(by_provider: dict, numerator: str) -> float:
    """Median over rounds of numerator's time / cpp's time in the same round (a load change on a shared machine
    shifts both)."""
    pairs = zip(by_provider[numerator]["samples_s"], by_provider["cpp"]["samples_s"])
    return statistics.median(a / b for a, b in pairs)


def table(results: dict) -> str:
    """Markdown table: one row per tier and case, the medians and cpp's per-round ratios to eager and compiled."""
    lines = [
        "| tier | case | eager ms | compile ms | cpp ms | cpp vs eager | cpp vs compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for tier, cases in results.items():
        for case, by_provider in cases.items():
            ms = {k: v["median_s"] * 1e3 for k, v in by_provider.items()}
            ref, cpp, comp = ms["reference"], ms["cpp"], ms.get("compile")
            comp_ms, vs_comp = ("-", "-") if comp is None else (f"{comp:.2f}", f"{ratio(by_provider, 'compile'):.2f}x")
            lines.append(
                f"| {tier} | {case} | {ref:.2f} | {comp_ms} | {cpp:.2f} | "
                f"{ratio(by_provider, 'reference'):.2f}x | {vs_comp} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", default=",".join(TIERS), help="comma-separated subset of " + ", ".join(TIERS))
    parser.add_argument("--shapes", default="ca,transformer,lcd_ca")
    parser.add_argument("--p", default="0,0.5", help="DropKey = dropout probabilities")
    parser.add_argument("--no-step", dest="step", action="store_false", help="skip the training step")
    parser.add_argument("--compile", action="store_true", help="add torch.compile(reference) (minutes per case)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5, help="attention calls per timed sample")
    parser.add_argument("--json", help="also write the results here (a new file)")
    parser.add_argument("--markdown", help="also write the printed summary here (a new file)")
    parser.add_argument("--render", help="print the summary of a --json file of an earlier run, and exit")
    parser.add_argument(
        "--update-doc",
        help="with --render: replace that file's block between DOC_BEGIN and DOC_END markers naming the JSON",
    )
    parser.add_argument(
        "--uncapped-torch",
        dest="cap_torch",
        action="store_false",
        help="run PyTorch at this CPU's widest ISA on every tier (only helo_fast's kernels capped)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.p = [float(p) for p in args.p.split(",") if p]
    if args.worker:
        print(json.dumps(time_worker(args)))
        return
    if args.update_doc and not args.render:
        parser.error("--update-doc needs --render JSON")
    for path in (args.json, args.markdown):
        if path and os.path.exists(path):
            parser.error(f"{path} exists: this run writes a new file (a run never overwrites another)")
    if args.render:
        with open(args.render) as f:
            text = render(json.load(f))
        if args.update_doc:
            update_doc_block(args.update_doc, args.render, text)
        else:
            print(text)
        return
    forwarded = [
        a
        for a in raw
        if not a.startswith(("--json", "--markdown", "--uncapped-torch")) and a not in (args.json, args.markdown)
    ]
    load_before = os.getloadavg()[0]
    results = {tier: run_tier(tier, forwarded, args.cap_torch) for tier in args.tiers.split(",")}
    doc = {
        "cpu": cpu_name(),
        "threads": int(os.environ.get("HELO_BENCH_THREADS", "2")),
        "batch": args.batch,
        "torch_capped": args.cap_torch,
        "load_before_after": [load_before, os.getloadavg()[0]],
        "results": results,
    }
    text = render(doc)
    print(text)
    if args.json:
        with open(args.json, "x") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "x") as f:
            f.write(text + "\n")


DOC_BEGIN = "<!-- cpu_tiers --render {path} -->"
DOC_END = "<!-- end cpu_tiers -->"


def doc_block(markdown: str, json_path: str):
    """(start, end) of the text between ``markdown``'s markers for ``json_path``, or None when it has none."""
    begin = DOC_BEGIN.format(path=json_path)
    start = markdown.find(begin)
    if start < 0:
        return None
    start += len(begin) + 1
    end = markdown.index(DOC_END, start)
    return start, end


def update_doc_block(doc_path: str, json_path: str, text: str) -> None:
    """Replace the block of ``doc_path`` generated from ``json_path`` by ``text`` (the block must exist)."""
    with open(doc_path) as f:
        markdown = f.read()
    span = doc_block(markdown, json_path)
    if span is None:
        raise SystemExit(f"{doc_path} has no line {DOC_BEGIN.format(path=json_path)!r}")
    with open(doc_path, "w") as f:
        f.write(markdown[: span[0]] + text + "\n" + markdown[span[1] :])


def render(doc: dict) -> str:
    """The run's summary as Markdown: the machine line, the per-tier table and the compile times (first calls)."""
    load = doc["load_before_after"]
    lines = [
        f"CPU: {doc['cpu']}; threads {doc['threads']}; B={doc['batch']}; PyTorch "
        f"{'capped at each tier' if doc['torch_capped'] else 'uncapped'}; load average before/after: "
        f"{load[0]:.2f} / {load[1]:.2f}",
        "",
        table(doc["results"]),
    ]
    compiled = [
        f"- {tier} {case}: torch.compile first call {by_provider['compile']['first_call_s']:.1f} s"
        for tier, cases in doc["results"].items()
        for case, by_provider in cases.items()
        if "compile" in by_provider
    ]
    if compiled:
        lines += ["", "First call of torch.compile(reference) (the compile), not in the medians above:", *compiled]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
