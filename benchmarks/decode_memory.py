"""Memory of a long-running process that decodes hostile pictures, as the served model does.

    python benchmarks/decode_memory.py [--side 6000] [--concurrent 3] [--rounds 3]

A flat 16-bit PNG of 6000 x 6000 pixels is ~80 KB on the wire and, decoded naively, about
1 GB in memory. Each variant runs in a fresh process: ``--concurrent`` threads decode such a
picture at once (the served model answers requests on worker threads), ``--rounds`` times,
and the process's resident memory is read before, at its peak and after. Variants:

- ``project``: ``imaging.decode`` as the project runs it (per-decode bound, a per-process
  budget shared by concurrent decodes, freed memory handed back after large decodes);
- ``unbounded``: the same decode with the per-process budget lifted and no hand-back,
  which is how the served model behaved before (it kept its 7.2 GB peak).

Prints peak and retained growth over each process's own baseline, and the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, resource, sys, threading, time
from pathlib import Path
from anime_face_id import imaging, memory

variant, picture, concurrent, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if variant == "unbounded":
    memory.DECODE_BUDGET.total = 1 << 62
    imaging.release_freed_memory = lambda: None

def rss() -> int:
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0]) * 1024

data = Path(picture).read_bytes()
imaging.decode(Path(picture + ".small").read_bytes())  # warm up: plugins, numpy, threads
baseline = rss()
peak = baseline
stop = False

def watch():
    global peak
    while not stop:
        peak = max(peak, rss())
        time.sleep(0.01)

watcher = threading.Thread(target=watch); watcher.start()
started = time.perf_counter()
for _ in range(rounds):
    threads = [threading.Thread(target=imaging.decode, args=(data,)) for _ in range(concurrent)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
elapsed = time.perf_counter() - started
time.sleep(0.2)
stop = True; watcher.join()
print(json.dumps({"baseline": baseline, "peak": peak, "after": rss(), "seconds": elapsed}))
"""


def bomb(side: int) -> bytes:
    values = np.zeros((side, side), dtype=np.uint16)
    values[::97] = 40000
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    return buffer.getvalue()


def measure(variant: str, picture: Path, concurrent: int, rounds: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, variant, str(picture), str(concurrent), str(rounds)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    picture = Path("/tmp") / f"anime-face-id-bomb-{args.side}.png"
    picture.write_bytes(bomb(args.side))
    Path(f"{picture}.small").write_bytes(bomb(64))
    print(
        f"{args.side}x{args.side} 16-bit PNG, {picture.stat().st_size:,} bytes; "
        f"{args.concurrent} decodes at once, {args.rounds} rounds"
    )
    results = {
        v: measure(v, picture, args.concurrent, args.rounds) for v in ("unbounded", "project")
    }
    for variant, r in results.items():
        print(
            f"  {variant:<10} peak +{mib(r['peak'] - r['baseline']):>10}   "
            f"kept after +{mib(r['after'] - r['baseline']):>10}   {r['seconds']:.1f} s"
        )
    before, now = results["unbounded"], results["project"]
    print(
        "  project / unbounded: peak growth "
        f"{(now['peak'] - now['baseline']) / max(1, before['peak'] - before['baseline']):.2f}x, "
        f"memory kept {(now['after'] - now['baseline']) / max(1, before['after'] - before['baseline']):.2f}x, "
        f"time {now['seconds'] / before['seconds']:.2f}x"
    )
    picture.unlink()
    Path(f"{picture}.small").unlink()


if __name__ == "__main__":
    main()
