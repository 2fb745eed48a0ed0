"""The per-user cache of public artefacts: things that depend only on their own configuration and public data, never
on a site's data, so one computation serves every run and sweep point that asks for the same thing.

Two artefacts live here: the FID feature extractor trained on public typeset digits (:mod:`privfed.metrics.classifier`)
and the public-pretrained initial model (:func:`pretrained_initial_model`). Each is stored under a SHA-256 of the
configuration that determines it; the run's ledger records that key and the SHA-256 of the weights, so an auditor can
recompute the artefact from the recorded configuration and compare. Location: ``$PRIVFED_CACHE``, else
``$XDG_CACHE_HOME/privfed``, else ``~/.cache/privfed``. ``PRIVFED_CACHE=off`` computes everything afresh and stores
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from audits.artifact_hash import sha256_path

#: bump when the pretraining code changes what it computes for the same configuration
PRETRAIN_FORMAT = 1


def user_cache_dir() -> Path | None:
    """The cache root, or None when caching is switched off (``PRIVFED_CACHE=off``)."""
    env = os.environ.get("PRIVFED_CACHE")
    if env and env.strip().lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "privfed"


def config_key(material: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of `material`: the cache key and the hash the ledger records."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def pretrained_initial_model(model: torch.nn.Module, material: dict[str, Any],
                             compute: Callable[[], float]) -> dict[str, Any]:
    """Bring `model` (freshly initialised) to its public-pretrained weights: from the cache when an entry for
    `material` exists and its weights still hash to what was stored, else by calling ``compute()`` (which trains
    `model` in place and returns its pretraining loss) and storing the result.

    Returns the round-0 record fields: ``pretrain_loss``, ``pretrain_key`` (the configuration hash),
    ``pretrain_sha256`` (of the weights file) and ``pretrain_cache`` ("reused", "stored" or "off").
    A corrupt or tampered entry is recomputed and replaced, never used.
    """
    key = config_key({"format": PRETRAIN_FORMAT, **material})
    root = user_cache_dir()
    entry = root / "pretrain" / key if root is not None else None
    if entry is not None and (entry / "meta.json").is_file() and (entry / "model.safetensors").is_file():
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("sha256") == sha256_path(entry / "model.safetensors") and meta.get("key") == key:
                state = load_file(str(entry / "model.safetensors"), device=str(next(model.parameters()).device))
                model.load_state_dict(state, strict=True)
                return {"pretrain_loss": meta["pretrain_loss"], "pretrain_key": key,
                        "pretrain_sha256": meta["sha256"], "pretrain_cache": "reused"}
        except (OSError, ValueError, KeyError, RuntimeError):
            pass                                # unreadable or mismatched: recompute below and replace it
    loss = compute()
    if entry is None:
        return {"pretrain_loss": loss, "pretrain_key": key, "pretrain_sha256": _weights_sha256(model),
                "pretrain_cache": "off"}
    # written to a private temporary folder, then renamed: two runs finishing at once never see a half entry
    tmp = entry.parent / f".{key}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        digest = sha256_path(tmp / "model.safetensors")
        meta = {"key": key, "sha256": digest, "pretrain_loss": loss, "material": {"format": PRETRAIN_FORMAT,
                                                                                   **material}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        publish_entry(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"pretrain_loss": loss, "pretrain_key": key, "pretrain_sha256": digest, "pretrain_cache": "stored"}


def publish_entry(tmp: Path, entry: Path) -> None:
    """Move the finished folder ``tmp`` to the cache entry ``entry`` in one rename, replacing a stale entry, so a
    reader never sees a half-written one. If another run stored the same entry in between, its equivalent copy is
    kept and ``tmp`` is left for the caller to remove."""
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    try:
        tmp.rename(entry)
    except OSError:
        pass


def _weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the weights as the cache would store them (safetensors bytes), without a cache."""
    from safetensors.torch import save

    return hashlib.sha256(save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})).hexdigest()
