"""Load test of ``trimode serve``: requests/s and latency P50/P95 per mode and concurrency.

A closed-loop generator: at concurrency C, C clients each send their next
request as soon as the previous one is answered, until the cell's request
count is reached (bounded: no open-ended loops). Every mode (``ar``,
``diffusion``, ``linear-spec``, ``quadratic-spec`` and ``auto``) runs at each
concurrency, with the same prompts in the same order, at temperature 0.

By default the script starts ``trimode serve`` itself (on a free port of
127.0.0.1, the shipped model unless ``--model`` is given) and stops it at
the end; ``--url`` measures a server that is already running instead.

Results go to ``benchmarks/serving/results-<tag>.md`` and ``.json``, with the
exact command at the top. The goal it checks: ``auto`` is never worse than the
better of ``ar`` and ``linear-spec`` by more than 10% (requests/s) at any of
the concurrencies.

    python benchmarks/serving/load_test.py                      # shipped model
    python benchmarks/serving/load_test.py --model DIR --tag my-model --requests 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
MODES = ["ar", "linear-spec", "quadratic-spec", "diffusion", "auto"]
PROMPTS = [  # short prompts of different lengths (completion style)
    "def fibonacci(n):",
    "The quick brown fox",
    "import os\nimport sys\n\ndef main():",
    "Once upon a time, in a small village by the sea,",
    "for i in range(10):",
    "class Stack:\n    def __init__(self):",
    "The three laws of motion are",
    "SELECT name, email FROM users WHERE",
]


@dataclass
class Cell:
    mode: str
    concurrency: int
    requests: int
    errors: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    nfe: int = 0
    modes_run: dict[str, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    def merge(self, other: "Cell") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.wall_s += other.wall_s
        self.latencies_s += other.latencies_s
        self.completion_tokens += other.completion_tokens
        self.nfe += other.nfe
        self.batch_sizes += other.batch_sizes
        for mode, count in other.modes_run.items():
            self.modes_run[mode] = self.modes_run.get(mode, 0) + count

    def summary(self) -> dict:
        return {"mode": self.mode, "concurrency": self.concurrency, "requests": self.requests,
                "errors": self.errors, "rps": self.rps, "tokens_per_s": self.tokens_per_s,
                "p50_s": self.pct(0.5), "p95_s": self.pct(0.95),
                "mean_s": statistics.fmean(self.latencies_s) if self.latencies_s else float("nan"),
                "tpf": self.completion_tokens / self.nfe if self.nfe else 0.0,
                "mean_batch": statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0,
                "modes_run": self.modes_run}


async def run_cell(url: str, model: str, mode: str, concurrency: int, n: int, max_tokens: int) -> Cell:
    cell = Cell(mode, concurrency, n)
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n:  # bounded: n requests in all
            i = next_index
            next_index += 1
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                    "temperature": 0, "mode": mode}
            start = time.perf_counter()
            try:
                r = await http.post("/v1/completions", json=body)
            except httpx.HTTPError:
                cell.errors += 1
                continue
            if r.status_code != 200:
                cell.errors += 1
                continue
            cell.latencies_s.append(time.perf_counter() - start)
            usage = r.json()["usage"]
            cell.completion_tokens += usage["completion_tokens"]
            cell.nfe += usage.get("nfe", 0)
            cell.batch_sizes.append(usage.get("batch_size", 1))
            ran = usage.get("mode", mode)
            cell.modes_run[ran] = cell.modes_run.get(ran, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        cell.wall_s = time.perf_counter() - start
    return cell


async def warm_up(url: str, model: str, modes: list[str], max_tokens: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for mode in modes:
            for prompt in PROMPTS[:2]:
                await http.post("/v1/completions", json={"model": model, "prompt": prompt, "mode": mode,
                                                         "max_tokens": max_tokens, "temperature": 0})


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "trimode.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--max-queue", "256"]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += shlex.split(args.server_args)
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"trimode serve exited with {proc.returncode}: {shlex.join(cmd)}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("trimode serve did not come up within 300 s")


def goal_check(cells: list[Cell], levels: list[int]) -> list[dict]:
    """auto's requests/s vs the better of ar and linear-spec, per concurrency (goal: ratio >= 0.9)."""
    by = {(c.mode, c.concurrency): c for c in cells}
    out = []
    for level in levels:
        if not all((m, level) in by for m in ("auto", "ar", "linear-spec")):
            continue
        best_mode = max(("ar", "linear-spec"), key=lambda m: by[(m, level)].rps)
        best, auto = by[(best_mode, level)].rps, by[("auto", level)].rps
        ratio = auto / best if best else 0.0
        out.append({"concurrency": level, "auto_rps": auto, "best_mode": best_mode, "best_rps": best,
                    "ratio": ratio, "ok": ratio >= 0.9})
    return out


def write_results(path_md: Path, path_json: Path, command: str, info: dict, cells: list[Cell],
                  goals: list[dict]) -> None:
    rows = [c.summary() for c in cells]
    path_json.write_text(json.dumps({"command": command, "info": info, "cells": rows, "goal": goals}, indent=2))
    lines = [f"# Serving load test: {info['model']}", "", "Command:", "", "```", command, "```", "",
             *([info["note"], ""] if info.get("note") else []),
             f"- date: {info['date']}", f"- machine: {info['machine']}", f"- server: {info['server']}",
             f"- requests per cell: {info['requests']} (at least 2 x concurrency per round), in {info['rounds']} "
             f"interleaved rounds over the modes; max_tokens {info['max_tokens']}, temperature 0; closed loop "
             "(each client sends its next request when the previous one is answered)"
             + ("; each timed cell follows an untimed wave of `concurrency` requests of its mode" if info.get("settle")
                else ""),
             f"- machine load average at the start: {info['load_before']}", "",
             "| mode | concurrency | requests | req/s | tokens/s | P50 s | P95 s | TPF | mean batch | errors "
             "| modes run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ran = ", ".join(f"{k}: {v}" for k, v in sorted(r["modes_run"].items()))
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['tpf']:.2f} | "
                     f"{r['mean_batch']:.1f} | "
                     f"{r['errors']} | {ran} |")
    lines += ["", "Goal: `auto` is never worse than the better of `ar` and `linear-spec` by more than 10% "
              "(requests/s).", "", "| concurrency | auto req/s | best of ar / linear-spec | ratio | ok |",
              "|---:|---:|---|---:|---|"]
    for g in goals:
        lines.append(f"| {g['concurrency']} | {g['auto_rps']:.2f} | {g['best_mode']} {g['best_rps']:.2f} | "
                     f"{g['ratio']:.2f} | {'yes' if g['ok'] else 'NO'} |")
    path_md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="measure this running server instead of starting one")
    p.add_argument("--model", help="model directory for the started server (default: the shipped model)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the started server")
    p.add_argument("--server-args", default="", help="extra `trimode serve` flags, e.g. \"--auto-max-load 2\"")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32,
                   help="requests per (mode, concurrency) cell, split over the rounds (at least 2 x concurrency "
                        "per round)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds over the modes per concurrency")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="skip the untimed wave of `concurrency` requests before each timed cell")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--tag", default=None, help="results file suffix (default: the served model id)")
    p.add_argument("--out-dir", default=str(HERE))
    p.add_argument("--note", default="", help="a line written under the command in the results (e.g. how the "
                                              "model was made)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.requests < 1 or args.rounds < 1 or any(c < 1 for c in levels):
        p.error("--requests, --rounds and every --concurrency must be >= 1")
    command = "python " + shlex.join([os.path.relpath(__file__, Path.cwd())] + (argv if argv is not None
                                                                                else sys.argv[1:]))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on the machine skews the numbers
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        card = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
        model = card["id"]
        asyncio.run(warm_up(url, model, modes, min(args.max_tokens, 16)))
        cells = []
        for level in levels:
            # Interleaved rounds (order reversed every other round): slow drifts of a shared machine hit
            # every mode alike instead of whichever mode happened to run during them.
            per_round = max(args.requests // args.rounds, 2 * level)
            merged = {mode: Cell(mode, level, 0) for mode in modes}
            for r in range(args.rounds):
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    if args.settle:  # untimed: what the previous cell left behind (queue, heap) settles
                        asyncio.run(run_cell(url, model, mode, level, level, args.max_tokens))
                    merged[mode].merge(asyncio.run(run_cell(url, model, mode, level, per_round, args.max_tokens)))
            for mode in modes:
                s = merged[mode].summary()
                print(f"{mode:>15} c={level:<3} {s['rps']:7.2f} req/s {s['tokens_per_s']:8.1f} tok/s "
                      f"P50 {s['p50_s']:.3f}s P95 {s['p95_s']:.3f}s TPF {s['tpf']:.2f} "
                      f"batch {s['mean_batch']:.1f} errors {s['errors']} ran {s['modes_run']}", flush=True)
                cells.append(merged[mode])
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    goals = goal_check(cells, levels)
    for g in goals:
        print(f"goal c={g['concurrency']}: auto {g['auto_rps']:.2f} vs {g['best_mode']} {g['best_rps']:.2f} "
              f"req/s -> ratio {g['ratio']:.2f} {'ok' if g['ok'] else 'NOT MET'}")
    import torch

    info = {"model": model, "date": time.strftime("%Y-%m-%d %H:%M"), "requests": args.requests,
            "rounds": args.rounds, "settle": args.settle, "load_before": load_before, "note": args.note,
            "max_tokens": args.max_tokens,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                       f"torch {torch.__version__}",
            "server": (f"started here: trimode serve {args.server_args}".strip() if proc is not None else url)
                      + f" (drafter {'yes' if card.get('has_drafter') else 'no'}, "
                        f"context {card.get('context_length')})"}
    tag = args.tag or model
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)  # a new --out-dir is created, not a traceback after the run
    write_results(out / f"results-{tag}.md", out / f"results-{tag}.json", command, info, cells, goals)
    print(f"wrote {out / f'results-{tag}.md'} and .json")
    return 0 if all(g["ok"] for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
