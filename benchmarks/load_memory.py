"""Peak memory of loading a big sharded bfloat16 checkpoint, relative to its file size.

Writes a synthetic checkpoint in the published Nemotron-Labs-Diffusion layout (the 8B's
config.json text with the 8B's per-layer shapes, fewer layers and a smaller vocabulary;
bfloat16, sharded, with model.safetensors.index.json) to a temporary directory, then
loads it in fresh processes, one per case, and reports each process's peak resident
memory (VmHWM) minus the resident memory of a process that only imported torch and
transformers' model code, as a ratio to the file size. Each case is measured right
after loading and again after every weight was read once (memory-mapped weights only
become resident when read). The temporary files are deleted at the end.

    python benchmarks/load_memory.py --layers 4 --vocab 32768 --shards 4

Goals: <= 1.3 x file size for bfloat16, <= 2.3 x for float32 (the float32 weights
alone are 2.0 x). transformers' own ``AutoModel.from_pretrained`` is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "published-configs" / "nld-8b.json"

STATUS = r"""
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # the file counts kB
"""

BASELINE = STATUS + r"""
import json, torch, transformers
from transformers import AutoModel, PreTrainedModel
print(json.dumps({"rss": status("VmRSS")}))
"""

# argv: checkpoint dir, loader ("trimode" | "transformers"), dtype name
CASE = STATUS + r"""
import json, sys, time
import torch, transformers
path, loader, dtype = sys.argv[1:4]
t0 = time.perf_counter()
if loader == "trimode":
    from trimode.loading import load
    model = load(path, dtype=dtype, drafter=False).model
else:
    import trimode
    from transformers import AutoModel
    model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype))
seconds = time.perf_counter() - t0
after_load = status("VmHWM")
with torch.no_grad():
    for p in model.parameters():
        p.sum()  # read every weight once
print(json.dumps({"after_load": after_load, "after_read": status("VmHWM"), "seconds": seconds,
                  "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}))
"""

CASES = [("trimode", "bfloat16"), ("trimode", "float32"), ("trimode", "auto"),
         ("transformers", "bfloat16"), ("transformers", "float32")]


def published_config(layers: int, vocab: int) -> dict:
    """The published 8B config.json text with fewer layers and a smaller vocabulary."""
    cfg = json.loads(FIXTURE.read_text())
    cfg.update(num_hidden_layers=layers, vocab_size=vocab)
    return cfg


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes of the published layout: trimode's model built on the meta device
    (no memory), whose names are the published ones (tests/test_published_checkpoints.py checks
    them against the spec independently)."""
    from trimode import NemotronLabsDiffusionConfig, NemotronLabsDiffusionModel

    with torch.device("meta"):
        model = NemotronLabsDiffusionModel(NemotronLabsDiffusionConfig(**cfg))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def write_checkpoint(path: Path, cfg: dict, shards: int) -> int:
    """Sharded bfloat16 safetensors + index, one shard in memory at a time; returns the weight bytes."""
    from safetensors.torch import save_file

    shapes = weight_shapes(cfg)
    sizes = {k: torch.Size(s).numel() * 2 for k, s in shapes.items()}
    budget = sum(sizes.values()) / shards
    groups, current, filled = [], [], 0
    for name in shapes:  # contiguous runs of about equal size, as save_pretrained shards
        if current and filled + sizes[name] > budget and len(groups) < shards - 1:
            groups.append(current)
            current, filled = [], 0
        current.append(name)
        filled += sizes[name]
    groups.append(current)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for s, names in enumerate(groups):
        file = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (0.02 * torch.randn(shapes[k], generator=gen, dtype=torch.bfloat16)) for k in names}
        save_file(tensors, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    total = sum(sizes.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return total


def settle(path: Path) -> None:
    """Flush the freshly written shards and read them once, so that every case starts from the
    same state (files in the page cache, no writeback running) and the first case is not slower."""
    os.sync()
    buffer = bytearray(64 * 2**20)
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def run_child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"))
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import transformers

    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.1f} GiB RAM, no GPU; torch {torch.__version__}, "
            f"transformers {transformers.__version__}, Python {platform.python_version()}")


def report(rows: list[dict], file_bytes: int, baseline: int, cfg: dict, args) -> str:
    gib = file_bytes / 2**30
    lines = [f"Checkpoint: {gib:.2f} GiB bfloat16 in {args.shards} shards (published 8B config text, "
             f"{cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}); baseline RSS (torch + transformers "
             f"imported) {baseline / 2**20:.0f} MiB.", "",
             "| loader | dtype asked | got | peak after load | ratio | peak after reading every weight | ratio "
             "| load s (page cache) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load_gib, read_gib = (r["after_load"] - baseline) / 2**30, (r["after_read"] - baseline) / 2**30
        lines.append(f"| {r['loader']} | {r['asked']} | {r['dtype']} | {load_gib:.2f} GiB | {load_gib / gib:.2f}x "
                     f"| {read_gib:.2f} GiB | {read_gib / gib:.2f}x | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the temporary checkpoint")
    args = ap.parse_args()

    cfg = published_config(args.layers, args.vocab)
    tmp = Path(tempfile.mkdtemp(prefix="trimode-load-memory-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        write_checkpoint(tmp, cfg, args.shards)
        on_disk = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        print(f"wrote {on_disk / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        settle(tmp)
        baseline = run_child(BASELINE)["rss"]
        rows = []
        for loader, dtype in CASES:
            row = run_child(CASE, str(tmp), loader, dtype)
            rows.append(dict(row, loader=loader, asked=dtype))
            print(f"{loader} {dtype}: {row}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gigabytes: never leave them behind
    print(f"Machine: {machine()}\n")
    print(report(rows, on_disk, baseline, cfg, args))


if __name__ == "__main__":
    main()
