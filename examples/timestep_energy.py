"""Which diffusion timesteps carry the sites' signal, and which of it the public subspace keeps.

At the public-pretrained model of a default run (digits, 10 sites, the run seed's pretraining, cached like a run's):
for each of B equal bins of timesteps, every training image's per-example gradient of the diffusion loss at a
timestep drawn in that bin (exact via torch.func) is clipped to C = dp.max_grad_norm and averaged. Prints, per bin,
the mean clipped gradient's norm (the signal a DP step carries against noise of fixed size σC; also unbiased, from
two halves of the images), the median per-example norm and the share clipped, and the share of the mean's energy in
the span of the k = 512 public gradients the default projects onto in round 1; then the cosines between the bins'
means. Post-processing arithmetic only: no ε is spent. It chose `fed.min_timestep` = T/5 for the default (README
"Training the private rounds on t ≥ 200").
Run: python examples/timestep_energy.py [SEED] [BINS]   (about a minute on 2 cores; default 0 5)
"""

from __future__ import annotations

import sys
import time

import torch
from subspace_energy import public_start

from privfed.federation.public_subspace import PublicSubspace


def main(seed: int, bins: int, k: int = 512) -> None:
    cfg, run, per_example, weights = public_start(seed)
    model, scheduler = run.model, run.scheduler
    images, c = run.splits.train.images, cfg.dp.max_grad_norm
    steps = scheduler.config.num_train_timesteps
    q = PublicSubspace(model, scheduler, run._public_images(), k=k, params=list(model.parameters()),
                       seed=cfg.seed).basis(1).double()
    print(f"seed {seed}: {len(images)} training images, C = {c}, d = {q.shape[0]}, k = {k}")
    gen = torch.Generator().manual_seed(7)
    means = []
    for b in range(bins):
        lo, hi = b * steps // bins, (b + 1) * steps // bins
        halves = [torch.zeros(q.shape[0], dtype=torch.float64) for _ in range(2)]
        norms = []
        t0 = time.perf_counter()
        for i in range(0, len(images), 64):
            x = images[i:i + 64]
            noise = torch.randn(x.shape, generator=gen)
            t = torch.randint(lo, hi, (len(x),), generator=gen)
            g = per_example(weights, x, noise, t)
            flat = torch.cat([g[n].reshape(len(x), -1) for n in weights], 1).double()
            norms.append(flat.norm(dim=1))
            flat = flat / torch.clamp(norms[-1][:, None] / c, min=1.0)
            halves[0] += flat[0::2].sum(0)
            halves[1] += flat[1::2].sum(0)
        n = len(images)
        mean = (halves[0] + halves[1]) / n
        unbiased = float((halves[0] / ((n + 1) // 2)) @ (halves[1] / (n // 2)))   # E = |mean gradient|²
        norm = torch.cat(norms)
        kept = float((q.T @ mean).norm() ** 2 / mean.norm() ** 2)
        means.append(mean / mean.norm())
        print(f"t in [{lo}, {hi}): mean clipped gradient norm {mean.norm():.4f} "
              f"(unbiased {max(unbiased, 0) ** 0.5:.4f}), "
              f"median per-example norm {norm.median():.2f}, clipped {float((norm > c).float().mean()):.2f}, "
              f"energy in the public span {kept:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    m = torch.stack(means)
    print("cosines between the bins' mean gradients:")
    print((m @ m.T).numpy().round(2))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 0, args[1] if len(args) > 1 else 5)
