"""How much of the sites' mean clipped gradient lies in the span of k public gradients, and how much noise does?

At the public-pretrained model of a default run (digits, 10 sites, the run seed's pretraining, cached like a run's):
every training image's per-example gradient of the diffusion loss (one noise and timestep draw each, exact via
torch.func), clipped to C = dp.max_grad_norm and averaged, is projected onto the basis that `dp.public_subspace = k`
uses in round 1 (privfed.federation.public_subspace). Prints the mean gradient's norm, the share of its energy the
span keeps, the share of isotropic noise it keeps (k/d), and its cosine with the public gradients' mean.
Post-processing arithmetic only: no ε is spent.
Run: python examples/subspace_energy.py [SEED] [K ...]   (about a minute on 2 cores; default K: 64 128 256)
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
from torch.func import functional_call, grad, vmap

from privfed.config import RunConfig
from privfed.federation.public_subspace import PublicSubspace
from privfed.federation.runner import FederatedRun
from privfed.federation.seeding import derive_seed
from privfed.models.unet import build_scheduler, build_unet


def public_start(seed: int):
    """(config, run, per-example gradient function, weights) at the public-pretrained model of a default run of
    `seed`; the function maps (weights, x, noise, t) batches to per-example gradients of the diffusion loss."""
    cfg = RunConfig.from_dict({"seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        run = FederatedRun.create(cfg, f"{tmp}/run")
    run.scheduler = build_scheduler(cfg.model)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    run.model = build_unet(cfg.model, channels=run.splits.train.channels, image_size=run.splits.train.size)
    run._public_pretrain()      # the run's own public start (from the cache when a run of this seed made it)
    model, scheduler = run.model, run.scheduler
    weights = {n: p.detach() for n, p in model.named_parameters()}

    def loss(w, x, noise, t):
        xt = scheduler.add_noise(x[None], noise[None], t[None])
        return (functional_call(model, w, (xt, t[None])).sample - noise[None]).pow(2).mean()

    return cfg, run, vmap(grad(loss), in_dims=(None, 0, 0, 0)), weights


def main(seed: int, ranks: list[int]) -> None:
    cfg, run, per_example, weights = public_start(seed)
    model, scheduler = run.model, run.scheduler
    gen = torch.Generator().manual_seed(123)
    images = run.splits.train.images
    total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    t0 = time.perf_counter()
    for i in range(0, len(images), 64):
        x = images[i:i + 64]
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=gen)
        g = per_example(weights, x, noise, t)
        flat = torch.cat([g[n].reshape(len(x), -1) for n in weights], 1).double()
        flat = flat / torch.clamp(flat.norm(dim=1, keepdim=True) / cfg.dp.max_grad_norm, min=1.0)
        total += flat.sum(0)
    mean = total / len(images)
    print(f"seed {seed}: sites' mean clipped gradient over {len(images)} images: norm {mean.norm():.4f} "
          f"(C = {cfg.dp.max_grad_norm}; {time.perf_counter() - t0:.0f} s)")
    public = run._public_images()
    for k in ranks:
        ps = PublicSubspace(model, scheduler, public, k=k, params=list(model.parameters()), seed=cfg.seed)
        q = ps.basis(1)
        kept = float((q.T @ mean).norm() ** 2 / mean.norm() ** 2)
        cosine = float(torch.nn.functional.cosine_similarity(ps.gradients(1).double().mean(0), mean, dim=0))
        print(f"k = {k:4d}: signal energy kept {kept:.3f}, isotropic noise energy kept {q.shape[1] / q.shape[0]:.2e}, "
              f"cosine with the mean of the k public gradients {cosine:+.3f}")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 0, args[1:] or [64, 128, 256])
