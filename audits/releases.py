"""The release inventory: every file a run writes into RUN_DIR and every field of every ledger record, metrics line,
site receipt, report.json section and site-to-server message, each classified.

Classes (what covers a release about the sites' private images):

* ``accounted``: covered by the ε the ledger records (the model, anything computed from the model alone, and the
  accounting itself).
* ``public``: independent of the sites' data (configuration, public pretraining, keys, roster, code versions,
  protocol parameters, randomness drawn by the protocol).
* ``declared``: depends on private data (or on the declared evaluation split) and is released by an explicit,
  documented choice; ``reveals`` says what it reveals.
* ``unaccounted``: depends on private data with no such choice; must not exist in a default run.

Matching is by ``fnmatch`` pattern, first match wins (specific entries before general ones): file patterns on the
path relative to RUN_DIR (POSIX), field patterns on a dotted path ``<kind>.<field>.<subfield>`` (site ids and other
map keys appear as path segments, so ``*`` stands for them). :func:`unlisted` walks a finished run and returns
whatever the inventory does not classify; a test fails on any. Under ``--dp off`` nothing is accounted: every
``accounted`` release is reported as ``declared`` ("no differential privacy") instead.

Pure: no privfed import (the audit renders the table in the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Mapping

ACCOUNTED, PUBLIC, DECLARED, UNACCOUNTED = "accounted", "public", "declared", "unaccounted"
CLASSES = (ACCOUNTED, PUBLIC, DECLARED, UNACCOUNTED)
MAX_DEPTH = 4          # field paths are walked this deep below the record kind; deeper values belong to their prefix

# what every release of one kind reveals (shared wording; the report's table prints it)
_N = ("the site's number of images n: public by the stated adjacency (add/remove one image, every n known; n = "
      "batch/q is in every DP event)")
_PARTICIPATION = ("who took part in, dropped out of or was refused each round: its readers get no amplification by "
                  "site sampling (the statement gives ε for them)")
_EVAL = ("a function of the model and of the declared evaluation splits (the test split and, for fid_val, the "
         "validation split; never a site's training images)")
_TIMING = "wall-clock time: depends on the Poisson batch sizes and on n"
_CLASSIFIER = ("the FID feature extractor: trained on public data (digits: typeset digits) or on the declared "
               "evaluation split, never on the sites' data (provenance: run_start.evaluation)")
_CONTAINER = "container: each field classified in its own table"


@dataclass(frozen=True)
class Release:
    where: str       # file | ledger | metrics | receipt | report | message
    pattern: str     # fnmatch pattern (file path relative to RUN_DIR, or dotted field path)
    status: str      # one of CLASSES
    reveals: str     # what it is and, for declared releases, what it reveals about the sites' data
    group: str       # the row of the report's compact table


def _r(where: str, group: str, status: str, reveals: str, *patterns: str) -> list[Release]:
    assert status in CLASSES
    return [Release(where, p, status, reveals, group) for p in patterns]


FILES: tuple[Release, ...] = tuple(
    _r("file", "configuration, keys, roster, pins", PUBLIC,
       "configuration, public keys (private keys mode 0600: secrets, never published), roster, site policies, "
       "ledger pins; independent of the sites' data",
       "config.toml", "keys/ledger.pub", "keys/ledger.key", "roster.json", "pins.txt", "sites/*/identity.pub",
       "sites/*/identity.key", "sites/*/site.toml", "sites/*/state.key", "key_holder/*")
    + _r("file", "round-0 checkpoint and samples", PUBLIC,
         "the initial model (seeded initialisation and public pretraining) and its samples: no site data",
         "checkpoints/round_0000/*", "samples/round_0000.png")
    + _r("file", "checkpoints and samples after round 0", ACCOUNTED,
         "the released model (with fed.ema_decay, also unet_ema/: its moving average over the released rounds) "
         "and samples generated from it (post-processing of the DP model)",
         "checkpoints/round_*/*", "samples/round_*.png")
    + _r("file", "configuration, keys, roster, pins", PUBLIC, "the name of the latest checkpoint",
         "checkpoints/latest")
    + _r("file", "FID feature extractor", DECLARED, _CLASSIFIER,
         "cache/domain_classifier.safetensors", "cache/domain_classifier.json",
         "cache/domain_classifier.provenance.json", "cache/public/*")
    + _r("file", "signed ledger, metrics, receipts", DECLARED, _CONTAINER,
         "ledger.jsonl", "metrics.jsonl", "sites/*/receipt.jsonl")
    + _r("file", "engine logs (Flower)", DECLARED,
         "process logs of the Flower engine's parties and the ServerApp's final status: the console's lines, the "
         "closing statement and per-exchange timings (the same values as the ledger; no site data)",
         "flower/logs/*", "flower/status.json")
    + _r("file", "configuration, keys, roster, pins", PUBLIC,
         "the Flower engine's transport credentials (one-run CA and SuperLink certificate, node keys; private keys "
         "mode 0600, never published) and the flwr CLI's connection file; independent of the sites' data",
         "flower/tls/*", "flower/nodes/*", "flower/home/*")
    + _r("file", "audit report", DECLARED,
         "derived from the ledger, metrics.jsonl and empirical.json (fields classified there)",
         "report/report.html", "report/report.json", "report/report.pdf", "report/figures/*.png",
         "report/*.stale")
    + _r("file", "empirical audit results", DECLARED,
         "results of attacks on helper runs retrained on the sites' data (non-private control included) or, with "
         "--synthetic-only, on synthetic data: AUC, TPR and ε lower bounds, and what the audit cost (audit_cost, "
         "unsigned). The spending is in the signed ledger (audit_spend): the DP helper runs' ε adds to the run's; "
         "results from the non-private control trained on the sites' data are a release with ε = ∞",
         "report/empirical.json")
    + _r("file", "empirical audit helper runs", UNACCOUNTED,
         "the audit's helper runs (a non-private control trained on the sites' data, and DP runs); deleted once "
         "scored, kept only with privfed audit --empirical --keep-audit-runs, never in a default run",
         "report/empirical_runs/*")
)

LEDGER: tuple[Release, ...] = tuple(
    _r("ledger", "record envelope", PUBLIC, "sequence number, time, hash chain, signature, schema version",
       "record.seq", "record.utc", "record.prev_hash", "record.signature", "record.schema_version")
    + _r("ledger", "run_start: evaluation provenance", DECLARED,
         "which data the FID feature extractor was trained on (public, or the declared evaluation split), how many "
         "images and their SHA-256",
         "run_start.evaluation", "run_start.evaluation.*")
    + _r("ledger", "run_start: dataset fingerprint", DECLARED,
         "SHA-256 of the dataset's source file(s): lets a holder of a candidate copy of the whole dataset confirm "
         "it; nothing about any single image",
         "run_start.dataset_fingerprint", "run_start.dataset_fingerprint.*")
    + _r("ledger", "run_start, roster, run_end, resume", PUBLIC,
         "configuration, versions, hardware, source commit, operator, public pretraining, roster keys",
         "run_start.run_id", "run_start.config_hash", "run_start.config", "run_start.config.*",
         "run_start.versions", "run_start.versions.*", "run_start.hardware", "run_start.hardware.*",
         "run_start.dp_mode", "run_start.secure_agg_mode", "run_start.dp_noise_rng", "run_start.noise_placement",
         "run_start.public_pretrain", "run_start.intended_use", "run_start.operator", "run_start.operator.*",
         "run_start.source", "run_start.source.*", "roster.*", "run_end.rounds_completed", "resume.*")
    + _r("ledger", "site sizes", DECLARED, _N,
         "dp_event.event.sample_rate", "budget_check.projected_epsilon", "round_end.metrics.examples")
    + _r("ledger", "ε and DP events", ACCOUNTED,
         "the accounting itself: final ε per site, δ, and each DP event's σ, steps, clip norm, accountant, unit",
         "run_end.final_epsilon", "run_end.final_epsilon.*", "run_end.delta", "dp_event.round", "dp_event.client",
         "dp_event.unit", "dp_event.delta", "dp_event.max_grad_norm", "dp_event.accountant", "dp_event.epsilon",
         "dp_event.event.type", "dp_event.event.noise_multiplier", "dp_event.event.steps", "dp_event.event.*")
    + _r("ledger", "audit spending", DECLARED,
         "what privfed audit --empirical spent, after run_end: each helper run's configuration hash, rounds, data "
         "(sites or synthetic), its ε per site, δ, accountant and typed DP events (their sample rates reveal n, as "
         "in dp_event); a non-private helper run on the sites' data is recorded as such (ε = ∞)",
         "audit_spend.helper_runs", "audit_spend.helper_runs.*")
    + _r("ledger", "audit spending", PUBLIC,
         "which audit ran, when, on which data, what it released and its statement (no value of the sites' data)",
         "audit_spend.audit", "audit_spend.data", "audit_spend.started_utc", "audit_spend.synthetic_source",
         "audit_spend.released", "audit_spend.statement")
    + _r("ledger", "budget checks", PUBLIC, "a site's cap, and whether the projected ε allowed the round",
         "budget_check.round", "budget_check.client", "budget_check.max_epsilon", "budget_check.allowed")
    + _r("ledger", "label counts", DECLARED,
         "per-site label counts, cells of 1–4 and their complements suppressed; n; not differentially private",
         "data_summary.*")
    + _r("ledger", "participation", DECLARED, _PARTICIPATION,
         "round_start.*", "site_event.*", "abort.*",
         "secure_agg.transcript.survivors", "secure_agg.transcript.dropped", "secure_agg.transcript.dropped.*",
         "secure_agg.transcript.excluded", "secure_agg.transcript.excluded.*",
         "secure_agg.transcript.reconstructed", "secure_agg.transcript.reconstructed.*",
         "secure_agg.transcript.graph_participants", "secure_agg.transcript.n", "secure_agg.transcript.contributors",
         "secure_agg.transcript.ciphertext_bytes", "secure_agg.transcript.ciphertext_bytes.*",
         "secure_agg.transcript.aborted", "he_decryption.statement.contributors")
    + _r("ledger", "secure-aggregation parameters and hashes", PUBLIC,
         "protocol parameters, setup hashes, graph randomness, key-holder statements (independent of the data)",
         "secure_agg.round", "secure_agg.transcript.mode", "secure_agg.transcript.plaintext",
         "secure_agg.transcript.note", "secure_agg.transcript.threshold", "secure_agg.transcript.degree",
         "secure_agg.transcript.degree_rule", "secure_agg.transcript.neighbours", "secure_agg.transcript.dimension",
         "secure_agg.transcript.clip_range", "secure_agg.transcript.identities", "secure_agg.transcript.modulus_bits",
         "secure_agg.transcript.quantization_step", "secure_agg.transcript.sum_error_bound",
         "secure_agg.transcript.levels_per_client", "secure_agg.transcript.protocol",
         "secure_agg.transcript.protocol_version", "secure_agg.transcript.roster_fingerprint",
         "secure_agg.transcript.round_index", "secure_agg.transcript.run_id", "secure_agg.transcript.setup_hash",
         "secure_agg.transcript.setup_hash_before_graph", "secure_agg.transcript.graph_randomness",
         "secure_agg.transcript.params", "secure_agg.transcript.params.*", "secure_agg.transcript.key_holder",
         "secure_agg.transcript.context_sha256", "secure_agg.transcript.min_contributors",
         "secure_agg.transcript.dim", "secure_agg.transcript.trust", "secure_agg.transcript.flood_sigma",
         "secure_agg.transcript.grid_bits", "secure_agg.transcript.summed_ciphertext_sha256",
         "secure_agg.transcript.noise", "secure_agg.transcript.noise.*",
         "he_decryption.*")
    + _r("ledger", "checkpoint hashes", ACCOUNTED, "SHA-256 of each (accounted or public) checkpoint",
         "round_end.round", "round_end.checkpoint", "round_end.checkpoint.*")
    + _r("ledger", "public pretraining", PUBLIC, "the configuration hash and weight hash of the public-pretrained "
         "initial model (privfed.cache): no site data", "round_end.metrics.pretrain_key",
         "round_end.metrics.pretrain_sha256")
    + _r("ledger", "ε per round", ACCOUNTED, "the largest ε so far (the accounting)", "round_end.metrics.epsilon_max")
    + _r("ledger", "FID, eval loss, classifier accuracy", DECLARED, _EVAL,
         "round_end.metrics.fid", "round_end.metrics.fid_interval", "round_end.metrics.fid_val",
         "round_end.metrics.eval_loss",
         "round_end.metrics.classifier_test_accuracy")
    + _r("ledger", "training loss (ledgers before issue 15)", UNACCOUNTED,
         "the sites' mean diffusion loss over their private batches: no ε covers it; privfed no longer writes it",
         "round_end.metrics.loss")
    + _r("ledger", "class histogram of samples", ACCOUNTED,
         "the feature extractor's labels of generated samples: post-processing of the DP model (and of the "
         "declared feature extractor)", "round_end.metrics.class_histogram")
    + _r("ledger", "timings", DECLARED, _TIMING,
         "round_end.metrics.train_seconds", "round_end.metrics.eval_seconds")
)

METRICS: tuple[Release, ...] = tuple(
    _r("metrics", "run_start, roster, run_end, resume", PUBLIC,
       "round index, public pretraining (its loss is on public data), the sample grid's file name",
       "round", "public_pretrain", "pretrain_loss", "pretrain_seconds", "sample_grid", "pretrain_key",
       "pretrain_sha256", "pretrain_cache")
    + _r("metrics", "ε and DP events", ACCOUNTED, "ε per site, δ and the console line that prints them",
         "epsilon", "epsilon.*", "epsilon_max", "delta", "report_lines", "noise", "noise.*")
    + _r("metrics", "participation", DECLARED, _PARTICIPATION, "selected", "contributors")
    + _r("metrics", "site sizes", DECLARED, _N, "examples")
    + _r("metrics", "FID, eval loss, classifier accuracy", DECLARED, _EVAL,
         "fid", "fid_interval", "fid_val", "eval_loss", "classifier_test_accuracy")
    + _r("metrics", "training loss (ledgers before issue 15)", UNACCOUNTED,
         "the sites' mean diffusion loss over their private batches: no ε covers it; privfed no longer writes it",
         "loss")
    + _r("metrics", "class histogram of samples", ACCOUNTED, "post-processing of the DP model", "class_histogram")
    + _r("metrics", "timings", DECLARED, _TIMING, "train_seconds", "eval_seconds", "seconds")
)

RECEIPTS: tuple[Release, ...] = tuple(
    _r("receipt", "record envelope", PUBLIC, "sequence number, time, hash chain, signature", "record.*")
    + _r("receipt", "configuration, keys, roster, pins", PUBLIC, "the site's policy, key and roster",
         "receipt_start.*")
    + _r("receipt", "site sizes", DECLARED, _N, "dp_spend.event.sample_rate")
    + _r("receipt", "ε and DP events", ACCOUNTED, "the site's own record of its DP events and ε",
         "dp_spend.*")
    + _r("receipt", "participation", DECLARED, _PARTICIPATION, "refusal.*", "site_event.*", "*.round")
)

REPORT: tuple[Release, ...] = tuple(
    _r("report", "audit report", PUBLIC, "report metadata and the audit's own findings",
       "schema", "generated_utc", "run_dir", "verified", "section_titles", "section_titles.*", "report_sha256",
       "sections.integrity", "sections.system", "sections.threat_model", "sections.dp_implementation",
       "sections.environment", "sections.limitations", "sections.crosswalk", "sections.releases")
    + _r("report", "ε and DP events", ACCOUNTED, "ε per site and round (section 5), the statement (section 2)",
         "sections.privacy_loss", "sections.privacy_statement")
    + _r("report", "audit report", DECLARED,
         "copies of declared fields: counts (8), participation (7, 9), n, FID, eval loss (10), empirical audit (11)",
         "sections.verdict", "sections.secure_aggregation", "sections.data_governance", "sections.training",
         "sections.utility", "sections.empirical_audit")
)

# what a site sends to the server (written nowhere unless a table above lists it)
MESSAGES: tuple[Release, ...] = tuple(
    _r("message", "site sizes", DECLARED, _N + "; the FedAvg weight is n",
       "train_reply.num_examples", "train_reply.weight", "train_reply.sample_rate")
    + _r("message", "ε and DP events", ACCOUNTED, "the round's DP event",
         "train_reply.steps", "train_reply.event_type", "train_reply.noise_multiplier", "train_reply.event_steps",
         "offer_reply.projected_epsilon", "offer_reply.max_epsilon", "offer_reply.accepted")
    + _r("message", "participation", DECLARED, _PARTICIPATION, "offer_reply.error", "offer_reply.reason",
         "error.*")
    + _r("message", "masked or encrypted update", ACCOUNTED,
         "the site's update masked (uniformly random alone) or CKKS-encrypted: only the sum of the survivors is "
         "revealed, and the DP covers it (server placement: the server sees the clean sum and is trusted)",
         "secagg_reply.array:sa.masked", "ckks_reply.array:*")
    + _r("message", "plaintext update", DECLARED,
         "secure aggregation off: the site's own update in the clear (DP-SGD noise on it under --dp sample, none "
         "under --dp client); the round is labelled plaintext in the ledger and the report",
         "plain_update.weight", "plain_update.array:delta")
    + _r("message", "secure-aggregation protocol", PUBLIC,
         "the protocol's public keys, commitments, encrypted Shamir shares, signatures and headers: independent of "
         "the data (the shares reveal nothing below the threshold)",
         "secagg_reply.sa.*", "ckks_reply.context_sha256", "hello_reply.*", "close_reply.*")
)

# one line per table row for the printed report (the full ``reveals`` is in report.json and on screen)
SHORT: dict[str, str] = {
    "site sizes": "n per site: public by the adjacency (n = batch/q in every DP event)",
    "label counts": "label counts per site, cells of 1–4 and complements suppressed; not DP",
    "participation": "who took part, dropped out or was refused per round (no site-sampling amplification)",
    "FID, eval loss, classifier accuracy": "model × declared evaluation (test) split, never a site's training images",
    "FID feature extractor": "trained on public data or the declared test split; provenance in run_start",
    "run_start: evaluation provenance": "which data the FID extractor and metrics use: count and SHA-256",
    "run_start: dataset fingerprint": "SHA-256 of the dataset's files: confirms a guessed copy of all of it",
    "timings": "wall-clock seconds: depend on Poisson batch sizes and n",
    "signed ledger, metrics, receipts": "containers: each field classified in its own table",
    "audit report": "derived from the ledger, metrics and empirical.json (fields classified there)",
    "empirical audit results": "attacks on helper runs (sites' or synthetic data); spending in the ledger",
    "audit spending": "the empirical audit's helper runs: ε, δ, DP events (signed, after run_end)",
    "empirical audit helper runs": "helper runs on the sites' data incl. a non-private control (--empirical)",
    "engine logs (Flower)": "the console's lines (values as in the ledger)",
}

INVENTORY: dict[str, tuple[Release, ...]] = {"file": FILES, "ledger": LEDGER, "metrics": METRICS,
                                             "receipt": RECEIPTS, "report": REPORT, "message": MESSAGES}


def classify(where: str, path: str, *, dp_mode: str = "sample") -> Release | None:
    """The inventory entry for one file path or dotted field path, or None when it is not listed.

    Under ``dp_mode == "off"`` an ``accounted`` release is returned as ``declared``: nothing is accounted then."""
    for rel in INVENTORY[where]:
        if fnmatchcase(path, rel.pattern):
            if dp_mode == "off" and rel.status == ACCOUNTED:
                return replace(rel, status=DECLARED,
                               reveals="no differential privacy (--dp off): " + rel.reveals)
            return rel
    return None


# ------------------------------------------------------------------------------------------------------ walking
def field_paths(obj: Any, prefix: str, *, depth: int = MAX_DEPTH) -> set[str]:
    """Dotted paths of the leaves of a JSON value (dicts are descended ``depth`` levels; lists are leaves)."""
    if isinstance(obj, Mapping) and obj and depth > 0:
        out: set[str] = set()
        for k, v in obj.items():
            out |= field_paths(v, f"{prefix}.{k}" if prefix else str(k), depth=depth - 1)
        return out
    return {prefix}


def record_paths(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """Field paths of signed records (ledger or receipt): ``record.<envelope field>`` and ``<kind>.<payload path>``."""
    out: set[str] = set()
    for r in records:
        out |= {f"record.{k}" for k in r if k not in ("kind", "payload")}
        out |= field_paths(r.get("payload"), str(r["kind"]))
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def run_files(run_dir: Path) -> list[str]:
    """Every regular file under RUN_DIR, as a POSIX path relative to it (temporary files included)."""
    return sorted(p.relative_to(run_dir).as_posix() for p in Path(run_dir).rglob("*") if p.is_file())


def walk_run(run_dir: str | Path) -> dict[str, set[str]]:
    """What a finished run directory releases: files, ledger / metrics / receipt / report.json field paths."""
    run_dir = Path(run_dir)
    found: dict[str, set[str]] = {"file": set(run_files(run_dir)), "ledger": set(), "metrics": set(),
                                  "receipt": set(), "report": set()}
    if (run_dir / "ledger.jsonl").is_file():
        found["ledger"] = record_paths(_jsonl(run_dir / "ledger.jsonl"))
    if (run_dir / "metrics.jsonl").is_file():
        for line in _jsonl(run_dir / "metrics.jsonl"):
            found["metrics"] |= field_paths(line, "", depth=2)
    for receipt in sorted(run_dir.glob("sites/*/receipt.jsonl")):
        found["receipt"] |= record_paths(_jsonl(receipt))
    rep = run_dir / "report" / "report.json"
    if rep.is_file():
        found["report"] = field_paths(json.loads(rep.read_text("utf-8")), "", depth=2)
    return found


def dp_mode_of(records: Iterable[Mapping[str, Any]]) -> str:
    return next((str(r["payload"].get("dp_mode")) for r in records if r.get("kind") == "run_start"), "sample")


def unlisted(run_dir: str | Path) -> list[tuple[str, str]]:
    """(where, path) of every release of a finished run the inventory does not classify (should be empty)."""
    return sorted((w, p) for w, paths in walk_run(run_dir).items() for p in paths if classify(w, p) is None)


def release_rows(run_dir: str | Path, *, dp_mode: str | None = None) -> list[dict[str, Any]]:
    """The report's compact table: one row per (group, class) that this run actually wrote, with where it lies,
    how many distinct files / fields it covers, and what it reveals; anything unlisted is its own unaccounted row."""
    run_dir = Path(run_dir)
    if dp_mode is None:
        ledger = run_dir / "ledger.jsonl"
        dp_mode = dp_mode_of(_jsonl(ledger)) if ledger.is_file() else "sample"
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for where, paths in walk_run(run_dir).items():
        for path in sorted(paths):
            rel = classify(where, path, dp_mode=dp_mode)
            if rel is None:
                rel = Release(where, path, UNACCOUNTED, "not in the release inventory", f"unlisted: {path}")
            row = rows.setdefault((rel.group, rel.status), {"release": rel.group, "class": rel.status,
                                                            "where": [], "items": 0, "reveals": rel.reveals,
                                                            "short": SHORT.get(rel.group, rel.reveals)})
            row["items"] += 1
            if where not in row["where"]:
                row["where"].append(where)
    order = {c: i for i, c in enumerate((UNACCOUNTED, DECLARED, ACCOUNTED, PUBLIC))}
    return sorted(rows.values(), key=lambda r: (order[r["class"]], r["release"]))


def message_paths(kind: str, fields: Iterable[str], arrays: Iterable[str] = ()) -> set[str]:
    """Dotted paths of one site-to-server message's fields (``<kind>.<field>``) and arrays (``<kind>.array:<name>``),
    as :func:`classify` (``where="message"``) matches them."""
    return {f"{kind}.{f}" for f in fields} | {f"{kind}.array:{a}" for a in arrays}


def message_rows() -> list[dict[str, Any]]:
    """What sites send the server that is written nowhere (so not in :func:`release_rows`)."""
    return [{"field": r.pattern, "class": r.status, "reveals": r.reveals} for r in MESSAGES
            if r.status in (DECLARED, UNACCOUNTED)]


__all__ = ["ACCOUNTED", "PUBLIC", "DECLARED", "UNACCOUNTED", "CLASSES", "Release", "INVENTORY", "classify",
           "field_paths", "record_paths", "message_paths", "walk_run", "unlisted", "release_rows", "message_rows",
           "dp_mode_of"]
