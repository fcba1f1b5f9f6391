"""Image ingest on Ray Data against the in-process executor, on the COCO photos.

The photos of the evaluation data (``MMRAG_EVAL_DATA``) are repeated to ``--files`` files and
ingested into fresh stores three ways: in process (decode threads + encode on the main thread),
and with ``executor="ray"`` on a local Ray cluster (started once, before the timed runs) with
1 and with 2 CPU encoder actors. For each run it prints:

- end-to-end images/s (``Engine.ingest`` wall time: models load inside it in every run; on Ray
  that includes starting the encoder actors),
- seconds to the first commit (model loading, and on Ray starting the actors and the first
  batch: commits come in bursts of ``models.batch_size`` items),
- CPU-ms per image: CPU time of this process and every process it started (Ray's included),
  sampled from /proc, divided by the images,

and the ratios of each Ray run to the in-process one. The CLIP model is ViT-B-32 with random
weights by default (the compute of the real model; no weights ship offline), or ``--clip tiny``
(the test suite's tiny CLIP from ``.mmrag-cache``), or any CLIP spec.

    python bench/ray_ingest.py [--files 200] [--clip random:ViT-B-32|tiny|SPEC] [--cpus N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexers.ingest.ray_executor import ray_cluster
from pipelines.engine import Engine
from retriever.config import eval_data_dir

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def clip_spec(name: str, folder: Path) -> str:
    """The CLIP spec for ``--clip``: random weights of an open_clip model, the tiny test model, or as given."""
    if name == "tiny":
        base = Path(os.environ.get("MMRAG_TEST_CACHE", REPO / ".mmrag-cache")) / "tiny-clip"
        if not (base / "tiny-clip.safetensors").is_file():
            raise SystemExit(f"no tiny CLIP under {base}: run the test suite once to train it")
        return f"{base / 'tiny-clip.json'}@{base / 'tiny-clip.safetensors'}"
    if not name.startswith("random:"):
        return name
    import open_clip
    import torch
    from safetensors.torch import save_file

    model = name.split(":", 1)[1]
    torch.manual_seed(0)
    net = open_clip.create_model(model, pretrained=None)
    path = folder / f"{model}-random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return f"{model}@{path}"


def corpus(folder: Path, n: int) -> Path:
    photos = sorted((eval_data_dir() / "images" / "coco").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no COCO photos under {eval_data_dir()} (set MMRAG_EVAL_DATA)")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(photos[i % len(photos)], folder / f"{i:04d}-{photos[i % len(photos)].name}")
    return folder


class CpuMeter:
    """CPU seconds of this process and its descendants, sampled from /proc (a process that ends
    between two samples loses at most one interval)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.seen, self.base = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self.base = dict(self._sample())
        self.seen = dict(self.base)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._sample())

    @property
    def seconds(self) -> float:
        return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.seen.items())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.seen.update(self._sample())

    @staticmethod
    def _sample() -> dict[tuple[int, int], float]:
        """(pid, start time) -> CPU seconds, for this process and all its descendants."""
        out, todo = {}, [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            out[(pid, int(stat[19]))] = (int(stat[11]) + int(stat[12])) / _TICK
            todo += [int(k) for k in kids]
        return out


def run(label: str, photos: Path, store: Path, spec: str, executor: str, actors: int = 0) -> dict[str, Any]:
    done: list[float] = []
    overrides: dict[str, Any] = {"models.clip": spec, "ingest.ray_actors": actors}
    with Engine.open(store, overrides=overrides) as eng, CpuMeter() as cpu:
        t0 = time.perf_counter()
        report = eng.ingest([photos], executor=executor, progress=lambda *_: done.append(time.perf_counter()))
        seconds = time.perf_counter() - t0
    n = len(done)
    assert report.added == n and not report.failed, report.failed[:3]
    return {"label": label, "files": n, "seconds": seconds, "e2e": n / seconds, "first": done[0] - t0,
            "cpu_ms": 1000 * cpu.seconds / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--clip", default="random:ViT-B-32", help="random:OPEN_CLIP_MODEL | tiny | a CLIP spec")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmrag-bench-") as tmp:
        tmp_path = Path(tmp)
        spec = clip_spec(args.clip, tmp_path)
        photos = corpus(tmp_path / "photos", args.files)
        results = [run("in process", photos, tmp_path / "local", spec, "local")]
        t0 = time.perf_counter()
        with ray_cluster(num_cpus=args.cpus):
            started = time.perf_counter() - t0
            warm = corpus(tmp_path / "warm", 4)  # Ray's first job starts and imports its worker processes
            run("warm-up", warm, tmp_path / "warm-store", spec, "ray", 1)
            for actors in (1, 2):
                results.append(run(f"ray, {actors} CPU actor(s)", photos, tmp_path / f"ray{actors}", spec, "ray", actors))
    print(f"{args.files} COCO photos, CLIP {args.clip}, {os.cpu_count()} cores; local Ray cluster of {args.cpus} CPUs "
          f"started in {started:.1f} s and warmed up (neither in the runs)")
    print(f"{'run':<24}{'seconds':>9}{'img/s':>9}{'1st commit s':>14}{'CPU-ms/img':>12}{'x img/s':>9}{'x CPU-ms':>10}")
    base = results[0]
    for r in results:
        print(f"{r['label']:<24}{r['seconds']:>9.1f}{r['e2e']:>9.1f}{r['first']:>14.1f}{r['cpu_ms']:>12.1f}"
              f"{r['e2e'] / base['e2e']:>9.2f}{r['cpu_ms'] / base['cpu_ms']:>10.2f}")


if __name__ == "__main__":
    main()
