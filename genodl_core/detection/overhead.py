"""What gathering the detection signals costs: epoch time with detection on against off.

``genodl bench --detection`` trains the same label-flip NT3 trial (paper size; small with
``--quick``) alone and as a pack of K, with ``train.detect = "on"`` and ``"off"`` in turn, in
this process, ``repeats`` times each, and reports the fastest epoch of each setting (the first
epoch, which compiles and warms up, left out; the minimum is the figure least disturbed by
other work on the machine) and the relative overhead. Both settings run the same execution
plan, so the difference is the signal collection alone.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genodl_core import records


@dataclass
class OverheadRow:
    """One configuration's fastest epoch seconds with detection off and on."""

    label: str
    off_s: float
    on_s: float

    @property
    def overhead(self) -> float:
        return self.on_s / self.off_s - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "off_s": self.off_s, "on_s": self.on_s,
                "overhead": self.overhead}


def bench_spec(*, quick: bool, device: str, epochs: int, seed: int, detect: str
               ) -> dict[str, Any]:
    """The measured trial: NT3 with 20% flipped labels (small shapes with ``quick``)."""
    model: dict[str, Any] = {"name": "nt3"}
    data: dict[str, Any] = {"source": "synthetic_nt3"}
    if quick:
        model.update(conv=[[8, 5, 1], [8, 5, 1]], pool=[1, 4], dense=[16])
        data.update(n_train=256, n_test=64, n_features=400)
    return {"seed": seed, "device": device, "model": model, "data": data,
            "noise": [{"kind": "label_flip", "fraction": 0.2}],
            "train": {"epochs": epochs, "batch_size": 16, "detect": detect}}


def measure(*, quick: bool = False, device: str = "auto", epochs: int = 4, repeats: int = 3,
            pack: int = 4, out_dir: str | Path | None = None) -> list[OverheadRow]:
    """Fastest epoch seconds with detection off and on, alone and packed (``pack`` > 1).

    Raises
    ------
    GenodlError
        A benchmark trial failed (its error is raised).
    """
    from genodl_core.training.trial import run_pack

    sizes = [1] + ([pack] if pack > 1 else [])
    times: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        for repeat in range(repeats):
            for k in sizes:
                # Alternating the order spreads any drift of the machine over both settings.
                order = ("off", "on") if repeat % 2 == 0 else ("on", "off")
                for detect in order:
                    # A new seed per repeat: a record never resumes a finished trial.
                    specs = [bench_spec(quick=quick, device=device, epochs=epochs,
                                        seed=1000 * repeat + i, detect=detect)
                             for i in range(k)]
                    results = run_pack(specs, out / f"{k}-{detect}", raise_errors=True)
                    curves = records.read_json(results[0].path / records.RESULT_FILE)["curves"]
                    seconds = curves["epoch_seconds"][1:] or curves["epoch_seconds"]
                    times.setdefault((k, detect), []).extend(seconds)
    return [OverheadRow("alone" if k == 1 else f"pack of {k}",
                        min(times[(k, "off")]),
                        min(times[(k, "on")])) for k in sizes]


def collect_cost_us(device: str = "cpu", *, k: int = 1, n: int = 1120, batch: int = 16,
                    outputs: int = 2, repeats: int = 2000) -> tuple[float, float]:
    """Microseconds of one :meth:`SignalCollector.collect` (per step) and one ``end_epoch``
    (per epoch) at NT3's shapes, timed alone: a figure that other work on a shared machine
    disturbs less than whole epochs."""
    import time

    import torch

    from genodl_core.detection.signals import SignalCollector
    from genodl_core.training.device import resolve_device

    device = resolve_device(device)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, outputs, (k, n), generator=gen).to(device)
    col = SignalCollector(labels, k, outputs, abstaining=False, epochs=10, last_epochs=5)
    idx = torch.stack([torch.randperm(n, generator=gen)[:batch] for _ in range(k)]).to(device)
    logits = torch.randn(k, batch, outputs, generator=gen).to(device)

    def timed(fn, count: int) -> float:
        for _ in range(10):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(count):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / count * 1e6

    return timed(lambda: col.collect(idx, logits), repeats), timed(col.end_epoch, repeats // 10)


def format_rows(rows: list[OverheadRow]) -> str:
    """The overhead table as text."""
    lines = [f"{'trials':<12} {'off s/epoch':>12} {'on s/epoch':>12} {'overhead':>9}"]
    lines += [f"{r.label:<12} {r.off_s:>12.4f} {r.on_s:>12.4f} {100 * r.overhead:>8.1f}%"
              for r in rows]
    return "\n".join(lines)


__all__ = ["OverheadRow", "bench_spec", "measure", "format_rows"]
