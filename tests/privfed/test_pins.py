"""Issue 16: `privfed run` prints the ledger key fingerprint at start and the head hash at the end, and writes both
to RUN_DIR/pins.txt (to be sent out of band); the pinned audit of the run passes with exactly those values."""

import re

from privfed.cli import main
from privfed.pins import PINS_FILENAME, read_pins


def test_run_prints_and_writes_its_pins_and_the_pinned_audit_passes(tmp_path, tiny_config, capsys):
    from audits.verify import verify_run

    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_config.replace(fed={"rounds": 1}, eval_every=1).to_toml())
    out = tmp_path / "r"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    printed = re.sub(r"\s+", " ", capsys.readouterr().out)
    rep = verify_run(out)
    pins = read_pins(out / PINS_FILENAME)
    assert pins["key_fingerprint"] == rep.key_fingerprint and pins["head_hash"] == rep.head_hash
    assert re.fullmatch(r"[0-9a-f]{32}", pins["run_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pins["written_utc"])
    assert f"ledger key fingerprint {rep.key_fingerprint}" in printed            # at start
    assert f"ledger head hash {rep.head_hash}" in printed and PINS_FILENAME in printed   # at the end
    assert printed.index(f"ledger key fingerprint {rep.key_fingerprint}") < printed.index("ledger head hash")
    assert not any(p.name.startswith(f".{PINS_FILENAME}") for p in out.iterdir())      # no temp file left
    capsys.readouterr()
    assert main(["audit", "verify", str(out), "--pin-key", pins["key_fingerprint"], "--head", pins["head_hash"]]) == 0
    assert main(["audit", str(out), "--pin-key", pins["key_fingerprint"], "--head", pins["head_hash"]]) == 0
