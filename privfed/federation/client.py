"""Client-side local training. Seams: `make_optimizer`/`make_loader`/`privatize` (DP-SGD plugs in here)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.nn.utils import parameters_to_vector

from privfed.config import FedConfig
from privfed.data.dataset import ImageDataset
from privfed.models.loss import diffusion_loss
from privfed.models.unet import trainable_parameters


@dataclass
class ClientUpdate:
    """What a client hands to the update channel: its model delta (flat float32) and bookkeeping."""

    client_id: int
    delta: torch.Tensor
    num_examples: int
    loss: float
    steps: int
    dp: dict[str, Any] | None = None     # the DP event of this round (sample-level DP), never ε alone
    weight: float | None = None          # aggregation weight; None means num_examples (FedAvg)
    info: dict[str, Any] = field(default_factory=dict)


class LocalTrainer:
    """Plain local training: `local_epochs` passes of shuffled minibatches with Adam on the ε-prediction loss."""

    def __init__(self, fed: FedConfig, scheduler, *, trainable: str = "all") -> None:
        self.fed = fed
        self.scheduler = scheduler
        self.trainable = trainable      # model.trainable: which parameters train and make up the update
        self.canaries = None            # GradientCanaries: set only by the empirical audit's helper runs
        self._inject = None             # this client-round's canary injector (or None)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(trained_parameters(model), lr=self.fed.lr)

    def make_loader(self, data: ImageDataset, generator: torch.Generator) -> Iterable[torch.Tensor]:
        n, bs = len(data), min(self.fed.batch_size, len(data))
        for _ in range(self.fed.local_epochs):
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n, bs):
                yield data.images[perm[i:i + bs]]

    def privatize(self, model, optimizer, data: ImageDataset, generator: torch.Generator, *, client_id: int,
                  round_index: int):
        """Hook for DP-SGD: return (model, optimizer, batches). Plain training returns its inputs unchanged."""
        return model, optimizer, self.make_loader(data, generator)

    def per_example_loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Hook: the ε-prediction loss per row (one random timestep ≥ fed.min_timestep and noise per example)."""
        return diffusion_loss(model, self.scheduler, x0, generator=generator, reduction="none",
                              min_timestep=self.fed.min_timestep)

    def backward(self, per_example_loss: torch.Tensor) -> None:
        """Hook for DP-SGD (ghost clipping needs the per-example loss): plain training backprops the mean."""
        per_example_loss.mean().backward()

    def add_canaries(self, model: torch.nn.Module, optimizer, batch_len: int) -> None:
        """Hook: add this step's sampled gradient canaries as extra examples of the mean-reduced batch loss."""
        if self._inject is not None:
            self._inject(trained_parameters(model), "grad", 1.0 / max(batch_len, 1))

    def dp_record(self, *, client_id: int, round_index: int, steps: int, data: ImageDataset) -> dict | None:
        """Hook for DP-SGD: the DP event of this round. None when training is not private."""
        return None

    def train(self, global_model: torch.nn.Module, data: ImageDataset, *, client_id: int, round_index: int,
              generator: torch.Generator) -> ClientUpdate:
        """Train a copy of the global model on the client's data and return the difference of weights."""
        device = next(global_model.parameters()).device
        model = copy.deepcopy(global_model).train()
        chosen = trainable_parameters(model, self.trainable)
        start = parameters_to_vector(chosen).detach().clone()
        keep = {id(p) for p in chosen}
        for p in model.parameters():        # frozen ones get no gradient: DP-SGD clips over the chosen ones only
            p.requires_grad_(id(p) in keep)
        optimizer = self.make_optimizer(model)
        self._inject = None if self.canaries is None else self.canaries.injector(
            client_id, round_index, sample_rate=min(self.fed.batch_size, len(data)) / len(data))
        model_t, optimizer, batches = self.privatize(model, optimizer, data, generator,
                                                     client_id=client_id, round_index=round_index)
        total, steps = 0.0, 0
        for x0 in batches:
            x0 = x0.to(device)
            if x0.shape[0] == 0:    # Poisson sampling can draw an empty batch: still a (noise-only) step
                optimizer.zero_grad(set_to_none=False)
                optimizer.step()
                steps += 1
                continue
            per_example = self.per_example_loss(model_t, x0, generator)
            optimizer.zero_grad()
            self.backward(per_example)
            self.add_canaries(model, optimizer, x0.shape[0])
            optimizer.step()
            total += float(per_example.detach().mean())
            steps += 1
        delta = parameters_to_vector(chosen).detach() - start
        return ClientUpdate(client_id=client_id, delta=delta.float().cpu(), num_examples=len(data),
                            loss=total / max(steps, 1), steps=steps,
                            dp=self.dp_record(client_id=client_id, round_index=round_index, steps=steps, data=data))


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters local training changes (the others were frozen by :meth:`LocalTrainer.train`)."""
    return [p for p in model.parameters() if p.requires_grad]
