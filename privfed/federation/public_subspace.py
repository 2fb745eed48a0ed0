"""Public gradient subspace: the server projects distributed DP-SGD's noisy mean gradient onto the span of k
public per-example gradients taken at the current model.

The mean gradient of the sites' clipped examples is nearly low-rank and lies mostly in the span of a few hundred
gradients of public images (measured on the digits default with examples/subspace_energy.py: 96.6 % of its energy in
the span of 64 typeset-digit gradients, 98.6 % in 256), while isotropic noise keeps only k/d of its energy there
(0.16 % for k = 256, d = 163,985).
Projecting therefore removes almost all of the noise and little of the signal (Zhou, Wu & Banerjee 2021, "Bypassing
the ambient dimension"; Yu et al. 2021, "Do not let privacy overbill utility"; Kairouz et al. 2021, "Fast
dimension independent private AdaGrad on publicly estimated subspaces"). Energy is not all that matters: the few
per cent left outside carry much of what the FID rewards (README, "The projection's ceiling").

With ``dp.public_subspace_shrink`` the basis is the public gradients' principal directions and each coefficient is
shrunk by its estimated signal share against the noise level the server knows (positive-part James-Stein), so a
larger k keeps weak directions without their noise (README, "Shrinking a larger public basis").

The projection is post-processing: it uses only the released noisy sum, the current global model (itself released)
and public images, so it changes no ε and needs no trust beyond the noise placement's.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.func import functional_call, grad, vmap

from privfed.config import RunConfig
from privfed.data.dataset import ImageDataset
from privfed.errors import ConfigError
from privfed.federation.seeding import torch_generator

CHUNK = 64   # public examples per vectorised backward pass (bounds peak memory at about CHUNK·d floats)
# float64 entries per column block of the products with G (16 MiB): at k = 512 on the default UNet the three
# products took 2.7 s a round in such blocks, 3.0 s on a dense float64 copy and 4.4 s in 64 MiB blocks (2 cores)
BLOCK_ELEMENTS = 1 << 21
# an unset k is lowered so that the public gradients fit in this much memory: k = 512 of the default UNet
# (d = 163,985) take 0.34 GB; of the GPU preset's UNet on the 8×8 digits (d = 14.0 M) they would take 28.7 GB, so
# such a run gets k = 38
DEFAULT_MEMORY_BYTES = 2 << 30


def bytes_per_entry(*, shrink: bool) -> int:
    """Bytes the server holds per entry of the k × d public gradients: 4 for their float32 storage, and for the
    unweighted projection 16 more for their float64 copy and its orthonormal basis. Peak memory adds the per-chunk
    backward pass (a few hundred MB on the default UNet, whatever k)."""
    return 4 if shrink else 20


def device_memory_bytes(device: str) -> int:
    """Total memory of the device the gradients live on (bytes): the GPU's for cuda, physical RAM otherwise."""
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def public_subspace_fitted(cfg: RunConfig) -> bool:
    """Whether a run of ``cfg`` fits its public subspace rank to memory (a projection whose k was left unset)."""
    return bool(cfg.dp.public_subspace) and cfg.was_unset("dp", "public_subspace")


def fit_public_subspace(cfg: RunConfig, *, dimension: int) -> RunConfig:
    """``cfg`` with a public subspace whose gradients fit in memory (`dimension`: trainable parameters).

    An unset k (the default, 512) is lowered to what fits in DEFAULT_MEMORY_BYTES and written explicitly, with the
    shrinkage it had, so config.toml and a resumed run read the same k. An explicit k whose gradients would take
    more than half the device's memory is refused (ConfigError) with the largest k that fits there."""
    k, shrink = cfg.dp.public_subspace, cfg.dp.public_subspace_shrink
    if not k:
        return cfg
    entry = bytes_per_entry(shrink=shrink)
    per_k = entry * dimension
    if public_subspace_fitted(cfg):
        fit = min(k, DEFAULT_MEMORY_BYTES // per_k)
        if fit == k:
            return cfg
        return cfg.replace(dp={"public_subspace": fit, "public_subspace_shrink": shrink and fit > 0})
    limit = device_memory_bytes(cfg.device) // 2
    if k * per_k > limit:
        raise ConfigError(f"dp public_subspace = {k} needs {k * per_k / 1e9:.1f} GB for its public gradients "
                          f"({k} × {dimension:,} parameters × {entry} bytes), more than half of this "
                          f"{cfg.device} device's {2 * limit / 1e9:.1f} GB: choose --public-subspace "
                          f"{limit // per_k} or less")
    return cfg


class PublicSubspace:
    """An orthonormal basis of k public per-example gradients of the diffusion loss, recomputed each round at the
    model's current weights, and the projection onto it.

    `params` are the parameters the update vectors carry (``model.trainable``), in vector order; the others stay
    fixed. Public examples, their noise and timesteps come from a generator seeded by (seed, round), so a resumed
    run draws the same basis.
    """

    def __init__(self, model: torch.nn.Module, scheduler, public: ImageDataset, *, k: int,
                 params: list[torch.nn.Parameter], seed: int) -> None:
        if not 1 <= k <= len(public):
            raise ValueError(f"public subspace rank k must be in [1, {len(public)}] (public images); got {k}")
        self.model, self.scheduler, self.public, self.k, self.seed = model, scheduler, public, k, seed
        # names resolved once; the tensors are read each round, because the server's update (vector_to_parameters)
        # swaps each parameter's .data for a new tensor, so a tensor kept from here would stay at these weights
        ids = {id(p) for p in params}
        named = dict(model.named_parameters())
        by_id = {id(p): name for name, p in named.items()}
        self._trained = [(by_id[id(p)], p) for p in params]
        self._frozen = [(n, p) for n, p in named.items() if id(p) not in ids]

    def gradients(self, round_index: int) -> torch.Tensor:
        """The k public per-example gradients of this round (k × d, float32: the precision they are computed in), at
        the model's current weights. Products with them are taken in float64 (:func:`gram`, :func:`matvec`,
        :func:`rmatvec`), so keeping them in float32 halves the memory and loses nothing."""
        gen = torch_generator(self.seed, "public-subspace", round_index)
        trained = [n for n, _ in self._trained]
        weights = {n: p.detach() for n, p in self._trained}
        frozen = {n: p.detach() for n, p in self._frozen}
        device = next(self.model.parameters()).device
        steps = self.scheduler.config.num_train_timesteps
        idx = torch.randperm(len(self.public), generator=gen)[: self.k]
        x = self.public.images[idx]
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        t = torch.randint(0, steps, (len(x),), generator=gen)

        def loss(w, xi, ni, ti):
            xt = self.scheduler.add_noise(xi[None], ni[None], ti[None])
            pred = functional_call(self.model, {**frozen, **w}, (xt, ti[None])).sample
            return (pred - ni[None]).pow(2).mean()

        per_example = vmap(grad(loss), in_dims=(None, 0, 0, 0))
        # filled in place: collecting chunks and concatenating them held the k × d matrix twice
        out = torch.empty(len(x), sum(p.numel() for _, p in self._trained), dtype=torch.float32, device=device)
        with warnings.catch_warnings():
            # torch has no batching rule for CPU flash attention yet and says so on every call; the fallback loop
            # is exact, only slower
            warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
            for i in range(0, len(x), CHUNK):
                g = per_example(weights, x[i:i + CHUNK].to(device), noise[i:i + CHUNK].to(device),
                                t[i:i + CHUNK].to(device))
                torch.cat([g[n].reshape(g[n].shape[0], -1) for n in trained], 1, out=out[i:i + CHUNK])
                del g
        return out

    def basis(self, round_index: int) -> torch.Tensor:
        """A d × r matrix with orthonormal columns spanning this round's public gradients (r ≤ k: their rank)."""
        q, r = torch.linalg.qr(self.gradients(round_index).double().T)
        diag = r.diagonal().abs()
        return q[:, diag > 1e-10 * diag.max()]

    def project(self, g: torch.Tensor, round_index: int, *, noise_std: float | None = None) -> torch.Tensor:
        """Q Qᵀ g for this round's basis Q (same shape and dtype as `g`).

        With ``noise_std`` (τ: the standard deviation of g's noise per coordinate, in g's units) the basis is the
        public gradients' principal directions v_i, and each coefficient a_i = v_iᵀg is kept in proportion to its
        estimated signal share, max(0, 1 − τ²/a_i²) (positive-part James-Stein): a direction whose coefficient is
        no larger than the noise it carries is dropped, one far above it kept whole."""
        if noise_std is None:
            q = self.basis(round_index).to(g.device)
            return (q @ (q.T @ g.double())).to(g.dtype)
        # principal directions from the k × k Gram matrix G Gᵀ = U Λ Uᵀ: v_i = G ᵀu_i / s_i, s_i = √λ_i. An SVD of
        # G gives the same directions but cost 18.6 s a round at k = 512 on the default UNet, the Gram route 1.2 s
        # (float64: directions with λ below 1e-12 of the largest are dropped, so none is amplified by more than 1e6)
        G = self.gradients(round_index).to(g.device)
        lam, u = torch.linalg.eigh(gram(G))
        keep = lam > 1e-12 * lam.max()
        u, s = u[:, keep], lam[keep].sqrt()
        a = (u.T @ matvec(G, g.double())) / s
        w = (1 - noise_std ** 2 / a.square().clamp_min(1e-300)).clamp_min(0)
        return rmatvec(G, u @ (w * a / s)).to(g.dtype)


def _column_blocks(G: torch.Tensor):
    """G's columns in float64 blocks of about BLOCK_ELEMENTS entries (a float64 copy of all of G would double the
    memory the float32 storage saves)."""
    width = max(1, BLOCK_ELEMENTS // max(1, G.shape[0]))
    for j in range(0, G.shape[1], width):
        yield j, G[:, j:j + width].double()


def gram(G: torch.Tensor) -> torch.Tensor:
    """G Gᵀ in float64 (k × k) for a k × d matrix G of any float dtype."""
    out = torch.zeros(G.shape[0], G.shape[0], dtype=torch.float64, device=G.device)
    for _, block in _column_blocks(G):
        out.addmm_(block, block.T)
    return out


def matvec(G: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """G v in float64 (length k) for G (k × d) and a float64 vector v (length d)."""
    out = torch.zeros(G.shape[0], dtype=torch.float64, device=G.device)
    for j, block in _column_blocks(G):
        out.addmv_(block, v[j:j + block.shape[1]])
    return out


def rmatvec(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Gᵀ c in float64 (length d) for G (k × d) and a float64 vector c (length k)."""
    out = torch.empty(G.shape[1], dtype=torch.float64, device=G.device)
    for j, block in _column_blocks(G):
        torch.mv(block.T, c, out=out[j:j + block.shape[1]])
    return out
