"""Training throughput through the real trainer (ktrdr.training.Trainer), CPU and CUDA.

Cases:
  (a) hidden [32, 16], batch 32, ~150,000 samples     -- launch-bound; CUDA graphs matter
  (b) hidden [512, 256, 128], batch 4096, ~1,000,000 samples -- compute-bound

Usage:
  python bench/training.py                       # both cases on CPU (and CUDA when present)
  python bench/training.py --device cuda --epochs 5
  python bench/training.py --case a --samples-a 30000 --epochs 2   # quick CPU check
  python bench/training.py --bare                # also time a bare PyTorch loop for comparison

samples/s counts training samples over the batch-loop time of epochs after the first (the
first includes CUDA graph capture and allocator warm-up); validation time is reported apart.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ktrdr.training.model import ModelConfig, build_mlp
from ktrdr.training.trainer import Trainer, TrainerConfig

CASES = {
    "a": {"hidden": (32, 16), "batch": 32},
    "b": {"hidden": (512, 256, 128), "batch": 4096},
}


def make_data(n: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, features), dtype=np.float32)  # membership degrees live in [0, 1]
    score = x[:, 0] - x[:, 1] + 0.3 * rng.standard_normal(n).astype(np.float32)
    y = np.where(score > 0.2, 0, np.where(score < -0.2, 1, 2)).astype(np.int64)
    return x, y


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_loop(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], batch: int, device: str, epochs: int) -> float:
    """A minimal per-batch loop (no graphs) for reference; returns steady-state samples/s."""
    torch.manual_seed(0)
    model = build_mlp(x.shape[1], ModelConfig(hidden_layers=hidden)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    times = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), device=device)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return len(x) * len(steady) / sum(steady)


def run_case(name: str, samples: int, device: str, args: argparse.Namespace) -> None:
    case = CASES[name]
    x, y = make_data(samples, args.features)
    n_val = max(1, samples // 20)
    xtr, ytr, xv, yv = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    config = TrainerConfig(
        epochs=args.epochs,
        batch_size=case["batch"],
        early_stopping=False,
        restore_best=False,
        checkpoint_every=0,
        cuda_graphs=not args.no_graphs,
        steps_per_graph=args.steps_per_graph,
    )
    trainer = Trainer(ModelConfig(hidden_layers=case["hidden"], dropout=0.2), config, device=device, seed=0)
    t0 = time.perf_counter()
    result = trainer.fit(xtr, ytr, xv, yv)
    wall = time.perf_counter() - t0
    steady = result.train_seconds[1:] or result.train_seconds
    sps = len(xtr) * len(steady) / sum(steady)
    epoch_s = [h.duration_s for h in result.history]
    steady_epoch = sum(epoch_s[1:]) / max(1, len(epoch_s) - 1) if len(epoch_s) > 1 else epoch_s[0]
    graphs = "on" if result.cuda_graphs else "off"
    if trainer.graph_error:
        graphs = f"failed ({trainer.graph_error})"
    print(
        f"case ({name}) hidden={list(case['hidden'])} batch={case['batch']} train={len(xtr):,} "
        f"device={result.device} graphs={graphs}\n"
        f"    trainer: {sps:,.0f} samples/s (steady), epoch {steady_epoch:.2f}s steady / "
        f"{epoch_s[0]:.2f}s first, {len(epoch_s)} epochs in {wall:.1f}s, "
        f"final train loss {result.history[-1].train_loss:.4f} val acc {result.history[-1].val_accuracy:.3f}"
    )
    if args.bare:
        bare = bare_loop(xtr, ytr, case["hidden"], case["batch"], result.device, max(2, min(args.epochs, 3)))
        print(f"    bare loop: {bare:,.0f} samples/s  (trainer/bare = {sps / bare:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="all", help="cpu | cuda | mps | all (cpu plus cuda when present)")
    parser.add_argument("--case", choices=["a", "b", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples-a", type=int, default=150_000)
    parser.add_argument("--samples-b", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=36)
    parser.add_argument("--no-graphs", action="store_true", help="disable CUDA graph capture")
    parser.add_argument("--steps-per-graph", type=int, default=None)
    parser.add_argument("--bare", action="store_true", help="also time a bare per-batch loop")
    args = parser.parse_args()

    devices = [args.device] if args.device != "all" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = ["a", "b"] if args.case == "both" else [args.case]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    for device in devices:
        if device.startswith("cuda"):
            print(f"GPU: {torch.cuda.get_device_name()}")
        for name in cases:
            samples = args.samples_a if name == "a" else args.samples_b
            run_case(name, samples, device, args)


if __name__ == "__main__":
    main()
