"""Fixed prose of the audit report: section list, threat model, DP hazards, limitations, regulatory crosswalk.

The crosswalk says what evidence the report provides for each provision; it is not legal advice.
"""

from __future__ import annotations

NOT_RECORDED = "not recorded"

SECTIONS: tuple[tuple[str, str], ...] = (
    ("integrity", "1. Integrity of the record"),
    ("privacy_statement", "2. Privacy statement"),
    ("system", "3. System and intended use"),
    ("threat_model", "4. Parties, trust and threat model"),
    ("privacy_loss", "5. Privacy loss per site and round"),
    ("dp_implementation", "6. Differential privacy: implementation details and hazards"),
    ("secure_aggregation", "7. Secure aggregation"),
    ("data_governance", "8. Data governance"),
    ("training", "9. Training procedure and checkpoints"),
    ("utility", "10. Utility"),
    ("empirical_audit", "11. Empirical privacy audit"),
    ("environment", "12. Environment"),
    ("limitations", "13. Known limitations"),
    ("crosswalk", "14. Regulatory crosswalk"),
)

ADJACENCY_IMAGE = ("one training image held by a site: neighbouring datasets differ by adding or removing one "
                   "image (the add/remove-one relation the accountant computed)")
ADJACENCY_SITE = ("one site, i.e. its entire local dataset: neighbouring federations differ by adding or removing one "
                  "site (add/remove-one)")

UNIT_NOT_PATIENT = ("The unit of privacy is one image, not one patient: a patient (or any person) with several images "
                    "in the training data is protected only by group privacy, whose ε grows with the number of their "
                    "images (up to k·ε for k images, with a larger δ as well).")

EPSILON_MEANING = ("What ε means: for any one unit, every outcome of training is at most e^ε times as likely with the "
                   "unit as without it (except with probability δ). ε = 10 allows a factor e^10 ≈ 22,000: it does "
                   "not rule out that an attacker tells whether a given image was used, or reconstructs a distinctive "
                   "one; it is a worst-case upper bound on what any attacker can learn, not a measured risk or a "
                   "probability of re-identification. ε ≤ 1 is generally considered strong protection, single-digit "
                   "ε moderate, and ε around 10 weak.")

PARTIES = [
    {"party": "Sites (clients)", "role": "hold the training images; run local training (DP-SGD under sample-level DP) "
     "and mask their model update; each keeps its own receipt of its DP spend, signed with its own long-term key",
     "trust": "trusted with their own data only"},
    {"party": "Aggregation server", "role": "selects sites, sends signed instructions, drives the "
     "secure-aggregation stages, applies the FedAvg step to the unmasked sum, writes the signed ledger",
     "trust": "not trusted with any site's update when secure aggregation is on (honest-but-curious, or active "
     "within the bounds below); trusted with the clean sum under DP-FedAvg, whose noise it adds"},
    {"party": "Model recipients", "role": "receive checkpoints and samples", "trust": "untrusted: may be an "
     "adversary with arbitrary side information"},
    {"party": "Auditor", "role": "verifies this report and the run directory independently", "trust": "needs the "
     "ledger key fingerprint from a channel the operator cannot rewrite later"},
]

THREAT_MODEL = [
    "Input privacy (secure aggregation): the server learns only the sum of the surviving sites' (clipped, quantized) "
    "updates and who answered each stage, not any individual update, while at least t sites survive; masks of "
    "dropped sites are removed by reconstructing their pairwise seeds from t shares.",
    "Active server: with every site pinning the roster of identity keys and its own policy, substituted keys, "
    "forged, relabelled or replayed messages, weaker or split setups, a chosen SecAgg+ graph, low-order keys and bad "
    "Shamir shares are rejected or identify their sender. With n_C colluding sites this holds only when every "
    "honest site pins max_colluders >= n_C, i.e. t >= floor((n + n_C)/2) + 1. The server can still drop honest "
    "sites down to t and abort rounds.",
    "Separate parties: in the in-process engine one operator runs every party and holds every key, so the active-"
    "server statements and the sites' receipts carry weight only when the sites run on machines the server "
    "operator cannot read.",
    "Output privacy (differential privacy): whatever is derived from the aggregated updates (checkpoints, samples, "
    "metrics computed from the model) is (ε, δ)-DP for the unit of privacy stated in section 2, against any "
    "recipient, independent of secure aggregation.",
    "Not covered: collusion of the server with more sites than the sites' pinned max_colluders (or with t or more), "
    "compromised site software, side channels (timing, message sizes), and the operator holding the ledger signing "
    "key (who can re-sign a rewritten ledger; the sites' own signed receipts are the cross-check).",
]

DP_HAZARDS = [
    ("Sampling assumption", "The accountant assumes Poisson sampling: every example joins every step's batch "
     "independently with probability q. Fixed-size batches or shuffling give a different (weaker) guarantee than "
     "the one stated."),
    ("Floating-point noise", "Gaussian noise sampled in floating point can leak through the low-order bits "
     "(Mironov 2012 style attacks); the stated ε assumes ideal real-valued noise."),
    ("Secure randomness", "Noise must be drawn from a cryptographically secure RNG (Opacus secure_mode). A noise "
     "generator seeded from the experiment seed (recorded in config.toml) would let anyone recompute and remove the "
     "noise."),
    ("Hyper-parameter tuning", "Privacy cost of tuning runs on the same data is not included in the ε of this run."),
    ("Data-dependent preprocessing", "Normalisation statistics, label sets or data-dependent image sizes computed "
     "from the private data are outside the accounting."),
    ("Accountant numerics", "PLD/PRV accountants discretise the privacy-loss distribution; the verifier recomputes "
     "ε with a pessimistic discretisation and flags differences above the tolerance."),
]

STATIC_LIMITATIONS = [
    "Signatures prove only that the holder of the ledger key wrote the ledger: an operator holding the key can "
    "rewrite and re-sign everything. The key fingerprint and the final head hash must be pinned out of band.",
    "Truncation of the ledger at a record boundary is detected only by a missing run_end record or a pinned head "
    "hash.",
    "metrics.jsonl, sample images and the empirical-audit file are not signed; only the metrics copied into "
    "round_end records and the checkpoint hashes are covered by the ledger.",
    "The DP guarantee holds for the mechanism as recorded (σ, q, steps, clipping). Whether the code actually "
    "implemented Poisson sampling, per-example clipping and secure noise is evidenced only by the versions and "
    "configuration recorded, not proven by this report.",
    "Counts in the data summary are suppressed below k but are not differentially private.",
    "Secure aggregation protects individual updates against an honest-but-curious server only (section 4).",
    "The empirical audit (section 11, when run) attacks helper runs retrained with the audited configuration and "
    "canaries, not the audited checkpoints themselves (except the natural-image attack); its ε values are lower "
    "bounds at 95 % confidence: they can refute the claimed ε, never certify it.",
]

CROSSWALK = [
    {"framework": "NIST SP 800-226 (Guidelines for Evaluating DP Guarantees)",
     "provision": "privacy unit, ε/δ, accountant, deployment hazards",
     "evidence": "Unit of privacy, per-site ε at δ recomputed from signed events, accountant, sampling and RNG "
                 "assumptions, hazards list", "sections": "2, 5, 6, 11"},
    {"framework": "GDPR Art. 25", "provision": "data protection by design and by default",
     "evidence": "Technical measures in use (DP-SGD parameters, secure aggregation mode, small-count suppression) "
                 "with signed evidence that they ran", "sections": "4, 6, 7, 8"},
    {"framework": "GDPR Art. 35", "provision": "data protection impact assessment",
     "evidence": "Input to a DPIA: processing description, parties and risks, residual risks and limitations; "
                 "the DPIA itself is the controller's", "sections": "3, 4, 13"},
    {"framework": "EU AI Act Art. 12", "provision": "record-keeping (automatic logging of events)",
     "evidence": "Append-only, hash-chained, signed event ledger with UTC timestamps and integrity verification",
     "sections": "1, 9"},
    {"framework": "EU AI Act Annex IV", "provision": "technical documentation",
     "evidence": "System description, training procedure, data governance summary, metrics, environment, "
                 "limitations", "sections": "3, 8, 9, 10, 12, 13"},
    {"framework": "HIPAA 45 CFR 164.514(b)(1) (expert determination)",
     "provision": "very small risk of re-identification, methods documented",
     "evidence": "Quantified privacy loss and its assumptions, empirical audit results where recorded; the "
                 "determination itself requires a qualified expert", "sections": "2, 5, 11, 13"},
]

DISCLAIMER = ("This report states what the recorded evidence shows. It is not legal advice and does not by itself "
              "establish compliance with any law or standard.")
