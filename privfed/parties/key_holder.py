"""The key-holder role (CKKS aggregation only): a party of its own, neither a site nor the server.

It creates the CKKS context, publishes only the public context (``make_context_public()``, signed with its own
Ed25519 key so that sites can tell it from a context the server made up), keeps the secret key, and decrypts only
a summed ciphertext that at least ``min_contributors`` distinct roster sites contributed to. Before release it
checks the sum's range and floods it with noise (:mod:`secure_agg.he.flooding`); it signs what it decrypted (the
hashes of the ciphertext and the result, the contributors, σ), and the server records that statement in the ledger.

Layout (in-process engine: ``RUN_DIR/key_holder/``)::

    identity.key      Ed25519 private key (PKCS#8 PEM, mode 0600)
    identity.pub      its public key
    ckks_secret.ctx   the TenSEAL context with the secret key (mode 0600; never sent anywhere)
    ckks_public.ctx   the public context it publishes (no secret key; the same bytes across a resume)
    decryptions.jsonl the statements it signed, one per released round (written and fsynced before the release)

Trust: the key holder sees only aggregates of >= min sites and trusts the server's list of contributors (it cannot
check that the ciphertext it receives is really their sum). It releases at most one decryption per round and only
for rounds after the last one it released (persisted, so a resume or a replay cannot ask again): a server cannot get
more releases than rounds, and a resumed round whose aggregate was already released is refused (the round aborts)
rather than decrypted twice. A server colluding with the key holder learns every site's update.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfed.parties import messages as M
from privfed.parties.identity import fingerprint, load_or_init
from secure_agg.errors import (IntegrityError, ReplayError, SecAggError, TooFewContributorsError,
                               UnknownIdentityError)
from privfed.rundir import atomic_write_bytes
from secure_agg.he import CkksParams, PublicContext, SecretContext, digest
from secure_agg.he.flooding import DEFAULT_GRID_BITS, DEFAULT_SIGMA
from secure_agg.he.statements import (CONTEXT_LABEL, DECRYPTION_LABEL, context_statement, decryption_statement,
                                      sign_statement)

SECRET_FILE = "ckks_secret.ctx"
PUBLIC_FILE = "ckks_public.ctx"
RELEASES_FILE = "decryptions.jsonl"


def _write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyHolder:
    """Holds the CKKS secret key of a run; answers ``he_context`` and ``he_decrypt`` messages from the server."""

    def __init__(self, key_dir: str | Path, *, run_id: str, server_key: Ed25519PublicKey, roster_ids,
                 min_contributors: int, params: CkksParams | None = None, flood_sigma: float = DEFAULT_SIGMA,
                 grid_bits: int = DEFAULT_GRID_BITS) -> None:
        if min_contributors < 2:
            raise ValueError("the key holder's minimum must be at least 2 sites (a sum of one is that site's update)")
        self.dir = Path(key_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_init(self.dir)
        self.run_id = run_id
        self.server_key = server_key
        self.roster_ids = frozenset(int(c) for c in roster_ids)
        self.min_contributors = int(min_contributors)
        self.params = params or CkksParams()
        self.params.check()
        self.flood_sigma, self.grid_bits = float(flood_sigma), int(grid_bits)
        secret, public = self.dir / SECRET_FILE, self.dir / PUBLIC_FILE
        if secret.exists():
            if secret.stat().st_mode & 0o077:
                raise IntegrityError(f"{secret}: the CKKS secret key must be mode 0600")
            self._ctx = SecretContext.from_secret_bytes(secret.read_bytes(), self.params)
            self._public = public.read_bytes()
            # the published context must belong to this secret key (a round trip decrypts)
            probe = np.linspace(-0.1, 0.1, 8)
            pub = PublicContext(self._public, params=self.params)
            if np.max(np.abs(self._ctx.decrypt_flooded(pub.encrypt(probe), dim=8, bound=1.0) - probe)) > 1e-6:
                raise IntegrityError(f"{public}: the public context does not belong to the stored secret key")
        else:
            self._ctx = SecretContext.create(self.params)
            self._public = self._ctx.public_bytes()
            _write_secret(secret, self._ctx.secret_bytes())
            atomic_write_bytes(public, self._public)
        self.context_sha256 = digest(self._public)
        # the statements this key holder signed (its own record, persisted: it bounds what it will release next)
        self.decrypted: list[dict] = self._load_releases()

    def _load_releases(self) -> list[dict]:
        path = self.dir / RELEASES_FILE
        if not path.exists():
            return []
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                st = json.loads(line)
                int(st["round"])
            except (ValueError, KeyError, TypeError) as e:
                # an unreadable record must not reset the one-release-per-round bound
                raise IntegrityError(f"{path}:{n}: unreadable decryption record ({e})") from None
            out.append(st)
        return out

    def _record_release(self, statement: dict) -> None:
        """Append the statement and fsync it before the result leaves (a crash then costs a round, never a
        second release)."""
        fd = os.open(self.dir / RELEASES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(statement, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.decrypted.append(statement)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.identity.public_key

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity.public_key)

    def handle(self, msg: M.Message) -> M.Message:
        """Answer one server message; a refusal comes back as a signed ``error`` message."""
        try:
            M.verify(msg, self.server_key)
            if msg.sender != M.SERVER or msg.receiver != M.KEY_HOLDER or msg.run_id != self.run_id:
                raise M.InvalidMessage(f"key holder: message for run {msg.run_id!r} receiver {msg.receiver} from "
                                       f"{msg.sender}")
            if msg.kind == "he_context":
                kind, fields, arrays = self._context()
            elif msg.kind == "he_decrypt":
                kind, fields, arrays = self._decrypt(msg)
            else:
                raise M.InvalidMessage(f"key holder: unexpected {msg.kind!r} message")
        except SecAggError as e:
            kind, fields, arrays = "error", {"error": type(e).__name__, "reason": str(e)}, {}
        reply = M.make(kind, run_id=self.run_id, round_index=msg.round, sender=M.KEY_HOLDER, receiver=M.SERVER,
                       fields=fields, arrays=arrays)
        return M.sign(reply, self.identity.private_key)

    def _context(self):
        p = self.params
        st = context_statement(run_id=self.run_id, context_sha256=self.context_sha256, params=p.describe())
        return "he_context_reply", {
            "context_sha256": self.context_sha256,
            "context_signature": sign_statement(CONTEXT_LABEL, st, self.identity.private_key),
            "poly_modulus_degree": p.poly_modulus_degree, "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
            "scale_bits": p.scale_bits, "security_bits": p.security_bits,
        }, {"context": np.frombuffer(self._public, dtype=np.uint8)}

    def _decrypt(self, msg: M.Message):
        f = msg.fields
        last = max((int(st["round"]) for st in self.decrypted), default=None)
        if last is not None and msg.round <= last:
            raise ReplayError(f"key holder: the aggregate of round {last} was already released; it decrypts once per "
                              f"round and only later rounds (asked for round {msg.round})")
        contributors = list(f["contributors"])
        if len(set(contributors)) != len(contributors):
            raise TooFewContributorsError("key holder: the contributor list repeats a site")
        unknown = sorted(set(contributors) - self.roster_ids)
        if unknown:
            raise UnknownIdentityError(f"key holder: contributors {unknown} are not on the roster")
        if len(contributors) < self.min_contributors:
            raise TooFewContributorsError(f"key holder: refuses to decrypt an aggregate of {len(contributors)} "
                                          f"site(s); its minimum is {self.min_contributors}")
        ct = msg.arrays.get("ciphertext")
        if ct is None:
            raise M.InvalidMessage("he_decrypt without a ciphertext")
        ct_bytes = np.ascontiguousarray(ct).tobytes()
        result = self._ctx.decrypt_flooded(ct, dim=f["dim"], bound=f["bound"], sigma=self.flood_sigma,
                                           grid_bits=self.grid_bits)
        st = decryption_statement(run_id=self.run_id, round_index=msg.round, contributors=contributors,
                                  context_sha256=self.context_sha256, ciphertext_sha256=digest(ct_bytes),
                                  result_sha256=hashlib.sha256(result.astype("<f8").tobytes()).hexdigest(),
                                  flood_sigma=self.flood_sigma, grid_bits=self.grid_bits,
                                  min_contributors=self.min_contributors)
        sig = sign_statement(DECRYPTION_LABEL, st, self.identity.private_key)
        self._record_release(st)
        return "he_result", {"contributors": st["contributors"], "min_contributors": st["min_contributors"],
                             "context_sha256": st["context_sha256"], "ciphertext_sha256": st["ciphertext_sha256"],
                             "result_sha256": st["result_sha256"], "flood_sigma": st["flood_sigma"],
                             "grid_bits": st["grid_bits"], "statement_signature": sig}, {"sum": result}
