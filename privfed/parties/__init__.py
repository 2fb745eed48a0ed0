"""The parties of a federation and the messages between them (DESIGN §1).

- :mod:`privfed.parties.identity`: a site's long-term Ed25519 identity and the roster every site pins.
- :mod:`privfed.parties.policy`: a site's pinned policy (``site.toml``), which the server cannot lower.
- :mod:`privfed.parties.messages`: versioned messages and their strict codec (header fields + numpy arrays).
- :mod:`privfed.parties.site`: the site role (data, DP trainer, accountant, receipt, protocol half).
- :mod:`privfed.parties.server`: the server role (selection, instructions, protocol driver, ledger).
- :mod:`privfed.parties.engine`: the in-process engine that moves encoded messages between them.
"""
