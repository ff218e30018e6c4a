"""Peak memory per process of sharded training: DDP vs FSDP2 vs FSDP2 + activation checkpointing.

Runs a few ``joint`` steps of a randomly initialised model (the debug preset's shape scaled up: about
300M parameters by default) on 2 processes (``torchrun``, gloo on CPU, one thread each), once per mode,
through the trainer's own step (``_Run.train_step``: the same wrap, gradient sync, clipping and AdamW).
Each rank reports its resident-memory high-water mark (``VmHWM`` of ``/proc/self/status``):

- ``steps``: during the training steps only (the mark is reset after the model is built and wrapped,
  by writing 5 to ``/proc/self/clear_refs``): parameters, gradients, AdamW state, activations,
  communication buffers;
- ``whole``: over the whole process, including building the full model on every rank before FSDP2
  shards it (the trainer loads a checkpoint whole, then shards it).

and its step time (the mean over the steps after the first, which also allocates the AdamW state).

    python benchmarks/fsdp_memory.py                       # ~300M parameters, 3 steps per mode and setting
    python benchmarks/fsdp_memory.py --layers 2 --steps 2 --mmap-thresholds default   # a quick check

Writes ``benchmarks/reports/fsdp/fsdp_memory.md`` (and ``.json``). Goal: FSDP2 + activation
checkpointing <= 45% of DDP's peak per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPORT = Path(__file__).resolve().parent / "reports" / "fsdp" / "fsdp_memory.md"
GIB = 1024 ** 3
GOAL = 0.45  # FSDP2 + activation checkpointing, as a share of DDP's peak per process
MODES = {  # name: (parallel, activation_checkpointing)
    "ddp": ("ddp", False),
    "fsdp": ("fsdp", False),
    "fsdp+ac": ("fsdp", True),
}


# ------------------------------------------------------------------ one rank
def status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    """Restart VmHWM from the current resident size (Linux: 5 > clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def model_config(args):
    from trimode.configuration import TrimodeConfig

    return TrimodeConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=2 * args.seq_len,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, mask_token_id=3,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, block_size=16)


def worker(args) -> None:
    """One rank of one mode: build, wrap, run ``args.steps`` joint steps, write this rank's figures."""
    from trimode.modeling import TrimodeModel
    from trimode.training import preset_config
    from trimode.training.distributed import setup, teardown
    from trimode.training.objectives import JointObjective
    from trimode.training.stages import Stage
    from trimode.training.trainer import _Run  # the trainer's own step, not a copy of it

    torch.set_num_threads(1)
    parallel, ac = MODES[args.worker]
    cfg = preset_config("debug", "joint")
    # steps: the schedule's length (a long one, as in a real run); this process runs only args.steps of it.
    for key, value in dict(seq_len=args.seq_len, micro_batch=args.micro_batch, steps=1000, block_sizes=[],
                           parallel=parallel, activation_checkpointing=ac, device="cpu", eval_batches=0,
                           checkpoint_interval=0, progress=False).items():
        setattr(cfg, key, value)
    dist = setup(cfg.device, cfg.parallel)
    rss = {"imported": status("VmRSS")}  # resident memory after each phase
    torch.manual_seed(0)
    model = TrimodeModel(model_config(args)).train()
    rss["model built"] = status("VmRSS")
    stage = Stage("joint", model, None, JointObjective(cfg, model.config, dist.device), batcher=None,
                  eval_source=list, export=lambda path, state=None: None)
    G = cfg.micro_batch * dist.world_size
    with tempfile.TemporaryDirectory() as out:
        run = _Run(cfg, dist, Path(out), stage, G)
        rss["wrapped"] = status("VmRSS")
        built = status("VmHWM")
        reset_peak()
        times, losses = [], []
        for step in range(args.steps):
            ids = torch.randint(4, args.vocab, (G, args.seq_len), generator=torch.Generator().manual_seed(step))
            t0 = time.perf_counter()
            sums, _, _ = run.train_step({"input_ids": ids})
            times.append(time.perf_counter() - t0)
            losses.append(sums[0].item() / sums[1].item())
            rss[f"step {step + 1}"] = status("VmRSS")
    steps_peak = status("VmHWM")
    result = {"mode": args.worker, "rank": dist.rank, "parameters": sum(p.numel() for p in model.parameters()),
              "rss": rss, "build_peak": built, "steps_peak": steps_peak, "whole_peak": max(built, steps_peak),
              "step_times": times, "losses": losses}
    Path(args.result_dir, f"{args.worker}-{dist.rank}.json").write_text(json.dumps(result))
    teardown(dist)


# ------------------------------------------------------------------ driver
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(mode: str, setting: dict, args, result_dir: Path) -> list[dict]:
    """torchrun 2 ranks of ``mode`` under ``setting``; their results (a failed run: its last error line)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), __file__, "--worker", mode, "--result-dir", str(result_dir),
           *worker_flags(args), "--seq-len", str(setting["seq_len"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if setting["mmap_threshold"] is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(setting["mmap_threshold"])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    print(f"{label(setting)}, {mode}: exit {proc.returncode} after {time.perf_counter() - started:.0f}s",
          file=sys.stderr, flush=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and line.startswith("[rank")]
        return [{"mode": mode, "error": (errors or proc.stderr.splitlines() or ["no output"])[-1],
                 "stderr": proc.stderr[-3000:]}]
    return [json.loads((result_dir / f"{mode}-{rank}.json").read_text()) for rank in (0, 1)]


SIZE_FLAGS = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "micro_batch", "steps")


def worker_flags(args) -> list[str]:
    return [item for key in SIZE_FLAGS for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]


def label(setting: dict) -> str:
    allocator = "glibc malloc, default settings" if setting["mmap_threshold"] is None else \
        f"glibc malloc with MALLOC_MMAP_THRESHOLD_={setting['mmap_threshold']}"
    return f"seq_len {setting['seq_len']}, {allocator}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = status_file("/proc/meminfo", "MemTotal")
    return (f"{os.cpu_count()} vCPU ({cpu}), {mem / GIB:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def status_file(path: str, key: str) -> int:
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def report(runs: list[tuple[dict, dict[str, list[dict]]]], args, command: str, elapsed: float) -> str:
    """The markdown report: the command, the machine, the model, then one section per setting."""
    params = next((r[0]["parameters"] for _, results in runs for r in results.values() if "error" not in r[0]), 0)
    lines = [
        "# Peak memory per process: DDP vs FSDP2 vs FSDP2 + activation checkpointing", "",
        f"Command: `{command}` ({elapsed / 60:.0f} min in all)", "",
        f"Machine: {machine()}; other jobs shared the cores and memory (step times are indicative).", "",
        f"Model: {params / 1e6:.0f}M parameters, random init (hidden {args.hidden}, intermediate "
        f"{args.intermediate}, {args.layers} layers, {args.heads} heads / {args.kv_heads} key-value heads, "
        f"vocab {args.vocab}), float32. Stage `joint` (AR + diffusion: each forward runs 2 x seq_len tokens), "
        f"micro-batch {args.micro_batch} per process, 2 processes (gloo, 1 thread each), {args.steps} steps, "
        "AdamW, grad clipping: the trainer's own step.", "",
        "Peak = resident-memory high-water mark (VmHWM) of the worse of the 2 ranks. *steps*: during the "
        "training steps (reset after the model is built and wrapped); *whole*: the whole process, including "
        "building the full model on each rank before FSDP2 shards it. Step time: mean of the steps after the "
        "first, slower rank. The allocator matters on CPU: glibc's default raises its mmap threshold as large "
        "blocks are freed, and then keeps the freed weights-sized blocks of later steps in its heap; a fixed "
        "`MALLOC_MMAP_THRESHOLD_` returns them to the system, so the peak is closer to the live tensors.", "",
        "What bounds the ratio on 2 processes: per process, DDP holds 5 copies of the parameters' size in float32 "
        "(weights, gradients, DDP's gradient buckets, 2 AdamW moments), FSDP2 4 halves (the shards of weights, "
        "gradients and moments): 40% before activations, plus what both hold alike (0.37 GiB of imported code) "
        "and FSDP2's per-layer all-gather and reduce-scatter buffers. Activation checkpointing removes the "
        "activations, so its gain grows with the tokens per forward; more processes shrink the shards further.",
    ]
    for setting, results in runs:
        lines += ["", f"## {label(setting)}", ""] + section(results)
    return "\n".join(lines) + "\n"


def goal_line(results: dict[str, list[dict]]) -> list[str]:
    """Whether FSDP2 + activation checkpointing stays within 45% of DDP's peak (during the steps)."""
    if any(m not in results or "error" in results[m][0] for m in ("ddp", "fsdp+ac")):
        return []
    ratio = max(r["steps_peak"] for r in results["fsdp+ac"]) / max(r["steps_peak"] for r in results["ddp"])
    verdict = "met" if ratio <= GOAL else "not met"
    return ["", f"Goal FSDP2 + activation checkpointing <= {GOAL:.0%} of DDP's peak per process: {ratio:.0%}, "
                f"{verdict}."]


def section(results: dict[str, list[dict]]) -> list[str]:
    """One setting: peaks and step times per mode, resident memory per phase, the losses."""
    ok = {m: r for m, r in results.items() if "error" not in r[0]}
    ref = {k: max(r[k] for r in ok["ddp"]) for k in ("steps_peak", "whole_peak")} if "ddp" in ok else None
    lines = ["| mode | peak during steps (GiB) | vs DDP | whole-process peak (GiB) | vs DDP | step time (s) |",
             "|---|---|---|---|---|---|"]
    for mode, ranks in results.items():
        if "error" in ranks[0]:
            lines.append(f"| {mode} | failed: {ranks[0]['error'][:200]} | | | | |")
            continue
        steps, whole = max(r["steps_peak"] for r in ranks), max(r["whole_peak"] for r in ranks)
        timed = [max(r["step_times"][i] for r in ranks) for i in range(1, len(ranks[0]["step_times"]))] or \
            [max(r["step_times"][0] for r in ranks)]
        vs = (lambda key, v: f"{100 * v / ref[key]:.0f}%") if ref else (lambda key, v: "")
        lines.append(f"| {mode} | {steps / GIB:.2f} | {vs('steps_peak', steps)} | {whole / GIB:.2f} | "
                     f"{vs('whole_peak', whole)} | {sum(timed) / len(timed):.1f} |")
    lines += goal_line(results)
    if not ok:
        return lines
    phases = list(next(iter(ok.values()))[0]["rss"])
    lines += ["", "Resident memory after each phase (GiB, rank 0):", "", "| mode | " + " | ".join(phases) + " |",
              "|---|" + "---|" * len(phases)]
    lines += [f"| {mode} | " + " | ".join(f"{v / GIB:.2f}" for v in ranks[0]["rss"].values()) + " |"
              for mode, ranks in ok.items()]
    lines += ["", "Losses of the steps (rank 0; the same data in every mode):", ""]
    lines += [f"- {mode}: {', '.join(f'{x:.4f}' for x in ranks[0]['losses'])}" for mode, ranks in ok.items()]
    return lines


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-lens", type=int_list, default=[256], help="comma-separated; one section each")
    p.add_argument("--mmap-thresholds", default="default,131072",
                   help="comma-separated MALLOC_MMAP_THRESHOLD_ values for the workers ('default': unset); "
                        "one section each")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--report", type=Path, default=REPORT)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per mode")
    p.add_argument("--render", type=Path, metavar="JSON", help="only write the report again from a saved .json")
    p.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(args) -> list[dict]:
    thresholds = [None if t.strip() == "default" else int(t) for t in args.mmap_thresholds.split(",") if t.strip()]
    return [{"seq_len": n, "mmap_threshold": t} for n in args.seq_lens for t in thresholds]


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        return worker(args)
    if args.render:
        return write(json.loads(args.render.read_text()), args.report)
    modes = [m.strip() for m in args.modes.split(",")]
    if bad := [m for m in modes if m not in MODES]:
        raise SystemExit(f"--modes {','.join(bad)}: unknown; allowed: {', '.join(MODES)}")
    command = "python benchmarks/fsdp_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings(args):
            runs.append({"setting": setting,
                         "results": {mode: run_mode(mode, setting, args, Path(tmp)) for mode in modes}})
    sizes = {key: getattr(args, key) for key in SIZE_FLAGS}
    write({"command": command.strip(), "elapsed_s": time.perf_counter() - started, "sizes": sizes, "runs": runs},
          args.report)


def write(saved: dict, path: Path) -> None:
    """Write the report (and its .json, the figures it is made from) and print it."""
    text = report([(r["setting"], r["results"]) for r in saved["runs"]], argparse.Namespace(**saved["sizes"]),
                  saved["command"], saved["elapsed_s"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(saved, indent=1))
    print(text)


if __name__ == "__main__":
    main()
