"""Client-level DP-FedAvg (McMahan et al. 2018): privacy unit = one site (all of its data).

Each sampled site's model update Δ is clipped to L2 norm ``clip_norm`` (:func:`clip_update`); the server adds
Gaussian noise N(0, (σ·clip_norm)²) once to the *sum* of the clipped updates (:func:`aggregate_noise`; with secure
aggregation the noise is added to the unmasked sum, never to an individual update). One round is one
Poisson-subsampled Gaussian step with q = client sampling fraction (:func:`client_level_event`); the guarantee
assumes each site is included independently with probability q. Fixed-size client sampling is not Poisson and
is not covered by this event.
"""

from __future__ import annotations

import torch

from dp.events import GaussianEvent


def clip_update(vector: torch.Tensor, *, clip_norm: float) -> tuple[torch.Tensor, bool]:
    """Scale ``vector`` (a flat update Δ) to L2 norm ≤ ``clip_norm``; returns ``(clipped, was_clipped)``."""
    if not (clip_norm > 0):
        raise ValueError(f"clip_norm (L2, per site update) must be > 0, got {clip_norm}")
    if not torch.is_tensor(vector):
        raise TypeError(f"vector must be a torch.Tensor, got {type(vector).__name__}")
    if not torch.isfinite(vector).all():
        raise ValueError("update contains NaN or inf; refusing to clip it (it would poison the aggregate)")
    norm = float(torch.linalg.vector_norm(vector.double()))
    if norm <= clip_norm:
        return vector.clone(), False
    return vector * (clip_norm / norm), True


def aggregate_noise(shape, *, noise_multiplier: float, clip_norm: float,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise with std ``noise_multiplier * clip_norm`` to add once to the sum of clipped updates.

    ``generator``: a seeded ``torch.Generator`` for reproducible experiments; ``None`` draws a fresh seed from the
    OS CSPRNG (production).
    """
    if not (noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (clip_norm > 0):
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    if generator is None:
        import os

        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    return torch.randn(tuple(shape), generator=generator, dtype=dtype) * (noise_multiplier * clip_norm)


def signal_to_noise_bound(*, sites_per_round: float, noise_multiplier: float, dimension: int) -> float:
    """Upper bound on ‖Σ clipped updates‖ / ‖noise‖ in one DP-FedAvg round (a ratio, no unit).

    Each of the ``sites_per_round`` updates has L2 norm ≤ C, so their sum has norm ≤ n·C; Gaussian noise with std
    σ·C per coordinate in ``dimension`` coordinates has norm ≈ σ·C·√d. The ratio n / (σ·√d) does not depend on C:
    below about 0.1 the noise's norm is ten times the largest possible signal and the model does not learn (site-
    level DP then needs roughly σ·√d sites per round). Infinite when σ = 0.
    """
    if not (sites_per_round > 0) or not (noise_multiplier >= 0) or not (dimension >= 1):
        raise ValueError(f"need sites_per_round > 0, noise_multiplier >= 0, dimension >= 1; got {sites_per_round}, "
                         f"{noise_multiplier}, {dimension}")
    if noise_multiplier == 0:
        return float("inf")
    return float(sites_per_round) / (float(noise_multiplier) * float(dimension) ** 0.5)


def client_level_event(*, noise_multiplier: float, client_sample_rate: float, rounds: int = 1) -> GaussianEvent:
    """Event for ``rounds`` DP-FedAvg rounds: q = client sampling fraction, one step per round; unit = one site."""
    return GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=client_sample_rate, steps=rounds)
