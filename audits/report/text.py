"""Fixed prose of the audit report: section list, threat model, DP hazards, limitations, regulatory crosswalk.

The crosswalk says what evidence the report provides for each provision; it is not legal advice.
"""

from __future__ import annotations

NOT_RECORDED = "not recorded"

SECTIONS: tuple[tuple[str, str], ...] = (
    ("verdict", "Verdict for sign-off"),
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
    ("releases", "15. Releases: what the run published and what covers it"),
)

RELEASE_CLASSES = (
    ("accounted", "covered by the recorded ε"),
    ("public", "independent of the sites' data"),
    ("declared", "depends on private data (or the declared evaluation split), released by a documented choice"),
    ("unaccounted", "depends on private data with no such choice: must not exist in a default run"),
)

ADJACENCY_COUNTS = ("Adjacency: add/remove one image, with each site's number of images n treated as public (n = "
                    "batch/q is readable from every DP event, so ε is not claimed to hide it).")


def epsilon_covers(units) -> str:
    """The sentences of the privacy statement that say exactly what ε covers and what it does not (section 15)."""
    sizes = ("" if "client" in units else "site sizes n (public by the adjacency: add/remove one image with every "
             "site's n known, as n = batch/q is in every DP event); ")
    txt = ("ε covers exactly the checkpoints after round 0 and what is computed from them alone (samples, their class "
           f"histogram). Not covered, declared in section 15: {sizes}label counts (section 8; suppressed, not DP); "
           "participation (who took part in each round); FID, eval loss and accuracy (functions of the model and "
           "of the declared evaluation split, never a site's training images); timings; the dataset's SHA-256; any "
           "empirical audit (it retrains on the sites' data, outside the ledger); hyper-parameter tuning. The "
           "sites' training loss is not released.")
    return txt

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
    ("Secure randomness", "Noise must be drawn from a cryptographically secure RNG (the generator this run used is "
     "named above). A noise generator seeded from the experiment seed (recorded in config.toml) would let anyone "
     "recompute and remove the noise."),
    ("Hyper-parameter tuning", "Privacy cost of tuning runs on the same data is not included in the ε of this run."),
    ("Data-dependent preprocessing", "Normalisation statistics, label sets or data-dependent image sizes computed "
     "from the private data are outside the accounting."),
    ("Accountant numerics", "PLD/PRV accountants discretise the privacy-loss distribution; the verifier recomputes "
     "ε with a pessimistic discretisation and flags differences above the tolerance."),
]
# the rows above as they read for an exact discrete mechanism and for the RDP accountant, which DP_HAZARDS' generic
# wording (floating-point Gaussian noise, PLD/PRV) would misstate
DISCRETE_NOISE = ("Floating-point noise", "Not for the noise: each site's share is drawn exactly from the discrete "
                  "Gaussian in integer arithmetic, and the updates are rounded to integers before it is added; each "
                  "event's sensitivity is inflated for that rounding (l2_sensitivity in the ledger). Arithmetic on "
                  "the unmasked sum is post-processing.")
RDP_NUMERICS = ("Accountant numerics", "RDP: ε is an upper bound converted from Rényi divergence bounds over a "
                "fixed grid of orders (for Gaussian events typically larger than what a PLD accountant states); "
                "PLD/PRV accountants discretise the privacy-loss distribution. The verifier recomputes ε from the "
                "recorded events and flags differences above the tolerance.")
DISCRETE_EVENTS = frozenset({"distributed_discrete_gaussian"})


def dp_hazards(event_types: set[str], accountants: set[str]) -> list[tuple[str, str]]:
    """DP_HAZARDS as they apply to a run whose DP events have `event_types` and were accounted with `accountants`:
    the floating-point row for exact discrete noise only when every event is discrete, the numerics row naming RDP
    when any event used it."""
    rows = []
    for name, detail in DP_HAZARDS:
        if name == DISCRETE_NOISE[0] and event_types and event_types <= DISCRETE_EVENTS:
            name, detail = DISCRETE_NOISE
        elif name == RDP_NUMERICS[0] and "rdp" in accountants:
            name, detail = RDP_NUMERICS
        rows.append((name, detail))
    return rows

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
    "Releases outside ε (site sizes, label counts, participation, evaluation metrics, timings) are declared in "
    "section 15; they are not differentially private.",
    "Secure aggregation protects individual updates against an honest-but-curious server only (section 4).",
    "The empirical audit (section 11, when run) attacks helper runs retrained with the audited configuration and "
    "canaries, not the audited checkpoints themselves (except the natural-image attack); its ε values are lower "
    "bounds at 95 % confidence: they can refute the claimed ε, never certify it.",
]

EPSILON_MEANING_SHORT = ("ε bounds how much any one image can change what the released model does: every outcome is at "
                         "most e^ε times as likely with the image as without it (except with probability δ). "
                         "ε = 10 allows a factor e^10 ≈ 22,000: it is a worst-case bound, not a measured risk; it "
                         "does not rule out that an attacker tells whether a given image was used, and it protects "
                         "an image, not a patient with several images. ε ≤ 1 is strong protection, ε ≈ 10 weak.")

NO_DP_MEANING = ("This run recorded no differential privacy: there is no ε, and no formal bound on what the released "
                 "model reveals about any training image.")

PLACEMENT_TRUST = {
    "local": "local: each site's DP-SGD adds the full noise before anything leaves the site; the guarantee holds "
             "against the server and every recipient of the model",
    "distributed": "distributed: each site adds a share of the noise before masking; the guarantee against the "
                   "server holds only while enough sites are honest and secure aggregation holds",
    "server": "server: the server adds the noise after unmasking and sees the clean sum of updates; the guarantee "
              "holds against recipients of the model, not against the server, which is trusted",
}

SIGN_OFF = ("I have read this verdict, the open issues and the known limitations (section 13). "
            "Name, role, date, signature:")

SECAGG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n", "sites selected for the round (each sent a masked update or dropped)"),
    ("t", "threshold: shares needed to remove a site's mask; fewer than t surviving sites abort the round, and "
          "fewer than t colluding parties learn nothing about a single update"),
    ("k", "SecAgg+ graph degree: each site masks with k neighbours instead of all n − 1 (Bell et al. 2020)"),
    ("survived", "sites whose masked update entered the sum"),
    ("dropped (stage)", "sites that went silent, and at which protocol stage; a site that dropped before the masked "
                        "input contributes nothing"),
    ("pairwise masks removed for", "dropped sites whose pairwise masks were cancelled by reconstructing their "
                                   "seeds from t shares (their update itself was never received)"),
    ("self-masks removed for", "surviving sites whose own random self-mask was reconstructed from t shares and "
                               "removed: normal for every survivor; it reveals only the mask, never the update"),
    ("excluded", "sites the server left out of the round (e.g. a failed key check)"),
)

SECAGG_PARAMETER_MEANING = {
    "protocol": "the aggregation protocol",
    "protocol_version": "version of the protocol messages",
    "identities": "how sites authenticate to each other",
    "modulus_bits": "updates are quantized to integers mod 2^bits; masks are uniform in that ring",
    "quantization_step": "value of one integer level of a quantized update",
    "clip_range": "each coordinate of a site's update is clipped to ± this before quantization",
    "sum_error_bound": "largest difference between the decoded sum and the exact sum of clipped updates",
    "dimension": "number of model parameters aggregated",
    "degree_rule": "why the SecAgg+ graph degree k was chosen",
}


def crosswalk_rows(f: dict) -> list[dict]:
    """Regulatory crosswalk generated from what this run recorded (``f``: facts from the report's sections).

    Each row says what this report evidences for a provision, whether it does ("evidenced", "partly", "not
    evidenced by this run"), and which section holds the evidence. A run without DP never reads like a DP run.
    """
    V = "verdict"
    dp, sa = f["dp"], f["secure_agg"]
    pinned = "pinned by the auditor" if f["pinned"] else "not pinned (integrity relative to the operator's key only)"
    eps = (f"ε {f['epsilon_range'][0]:.3g}–{f['epsilon_range'][1]:.3g} per site, unit one image (add/remove), "
           f"recomputed by this audit from the signed DP events" if dp and f["epsilon_range"] else "")
    sa_txt = (f"secure aggregation '{f['secure_agg_mode']}' in every round" if sa else
              "no secure aggregation: the server saw every site's update" if f["secure_agg_mode"] == "off" else
              f"secure aggregation '{f['secure_agg_mode']}' except rounds {f['plaintext_rounds']} (plaintext)")
    dp_txt = (eps + f"; noise placement {f['placement']}" if dp else
              "no differential privacy was recorded (dp mode: " + str(f["dp_mode"]) + "): no formal guarantee")
    supp = ("small counts suppressed with complementary cells" if f["suppression"] == "complementary" else
            "small counts suppressed, but the suppression can be undone by subtraction" if f["undoable"] else
            "small counts suppressed")

    def row(framework, provision, evidence, status, sections):
        return {"framework": framework, "provision": provision, "evidence": evidence, "status": status,
                "sections": sections}

    rows = [
        row("NIST SP 800-226", "evaluating DP guarantees: privacy unit, ε/δ, accountant, deployment hazards",
            (dp_txt + "; sampling and RNG assumptions and hazards listed") if dp else dp_txt,
            "evidenced" if dp else "not evidenced by this run", f"{V}, 2, 5, 6" if dp else f"{V}, 2"),
        row("GDPR Art. 5(2)", "accountability: the controller can demonstrate compliance",
            f"signed, hash-chained record of every processing step, {'verified' if f['verified'] else 'NOT verified'}"
            f", {pinned}; operator {'recorded' if f['operator'] else 'not recorded'}; "
            f"{f['receipts']} site receipt(s) cross-checked",
            "partly" if f["verified"] else "not evidenced by this run", f"{V}, 1, 5"),
        row("GDPR Art. 25", "data protection by design and by default",
            f"measures recorded as run: {dp_txt}; {sa_txt}; {supp}",
            "evidenced" if dp and sa else "partly", f"{V}, 4, 6, 7, 8"),
        row("GDPR Art. 30", "records of processing activities",
            f"operator {'recorded' if f['operator'] else 'not recorded'}, purpose (intended use) "
            f"{'recorded' if f['intended_use'] else 'not recorded'}, data set fingerprint "
            f"{'recorded' if f['dataset_fingerprint'] else 'not recorded'}, start and end times, recipients (model "
            "recipients); the record of processing itself is the controller's",
            "partly", f"{V}, 3, 8, 9"),
        row("GDPR Art. 32", "security of processing",
            f"{sa_txt}; integrity of the record (Ed25519 signatures, hash chain, artifact hashes), {pinned}",
            "partly" if sa else "not evidenced by this run", f"{V}, 1, 4, 7"),
        row("GDPR Art. 35", "data protection impact assessment",
            "input to a DPIA: processing description, parties and risks, residual risks and limitations; the DPIA "
            "itself is the controller's", "partly", "3, 4, 13"),
        row("EDPB Opinion 28/2024", "when an AI model is anonymous: extracting personal data, directly or by "
            "queries, insignificantly likely",
            (f"{eps}; empirical membership-inference audit {'results' if f['empirical'] else 'not run'}; the "
             "assessment is the controller's and the supervisory authority's, case by case" if dp else
             "no differential privacy: nothing here supports a claim that the model is anonymous; empirical audit "
             + ("results only (section 11)" if f["empirical"] else "not run")),
            "partly" if dp else "not evidenced by this run", f"{V}, 2, 11, 13"),
        row("EU AI Act Art. 12", "record-keeping (automatic logging of events)",
            "append-only, hash-chained, signed event ledger; UTC start and end times on page 1, a UTC time per "
            "round in section 9", "evidenced" if f["verified"] and f["complete"] else "partly", f"{V}, 1, 9"),
        row("EU AI Act Annex IV", "technical documentation",
            "system description, training procedure, data governance summary, metrics, environment, limitations",
            "partly", "3, 8, 9, 10, 12, 13"),
        row("HIPAA §164.312(b)", "audit controls: record and examine activity",
            "every round, DP event, budget check, secure-aggregation transcript and checkpoint is recorded in a "
            "signed ledger and examined by this audit", "evidenced" if f["verified"] else "not evidenced by this run",
            "1, 5, 7, 9"),
        row("HIPAA §164.312(c)(1)", "integrity: protect from improper alteration",
            f"Ed25519 signatures, hash chain, checkpoint hashes verified; {pinned}",
            ("evidenced" if f["pinned"] else "partly") if f["verified"] else "not evidenced by this run",
            f"{V}, 1, 9"),
        row("HIPAA §164.514(b)(1)",
            "expert determination: very small risk of re-identification, methods documented",
            (f"{eps}; assumptions and empirical audit where recorded; the determination requires a qualified expert"
             if dp else "no quantified privacy loss: this run provides nothing toward an expert determination"),
            "partly" if dp else "not evidenced by this run", "2, 5, 11, 13" if dp else "2"),
    ]
    return rows


DISCLAIMER = ("This report states what the recorded evidence shows. It is not legal advice and does not by itself "
              "establish compliance with any law or standard.")
