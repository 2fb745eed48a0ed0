"""Small-cell suppression that cannot be undone by subtraction (issue 16): a site's total n is public (the DP sample
rate q = batch/n gives it away), so every row with a small cell also hides complementary cells; the console table
prints the suppressed counts, never the raw ones; the report flags an older ledger whose suppression can be undone."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from privfed.run_ledger import SUPPRESSED, data_summary, rows_left_exposed, suppress_row

K = 5


def _attacker_ranges(n: int, published: dict[str, int | str]) -> dict[str, tuple[int, int]]:
    """What subtraction gives a reader who knows n and every published cell: each suppressed cell lies in
    [1, T - (m - 1)], T = n minus the published cells, m = the number of suppressed cells (all >= 1: zeros are
    published)."""
    hidden = [lab for lab, v in published.items() if v == SUPPRESSED]
    total = n - sum(v for v in published.values() if isinstance(v, int))
    return {lab: (1, total - (len(hidden) - 1)) for lab in hidden}


def test_the_issue_example_is_no_longer_undone_by_subtraction():
    """Site 1, label 4: 520 − 519 = 1 with '<5' alone; now the rare cell hides with a complement."""
    row = {"0": 300, "1": 150, "2": 69, "3": 0, "4": 1}
    shown = suppress_row(row, k=K)
    assert shown["4"] == SUPPRESSED and shown["3"] == 0 and shown["0"] == 300
    assert sum(v == SUPPRESSED for v in shown.values()) >= 2
    lo, hi = _attacker_ranges(520, shown)["4"]
    assert lo < K <= hi          # the reader cannot even tell whether label 4 is rare at this site


def test_rows_without_small_cells_are_published_exactly():
    row = {"0": 5, "1": 0, "2": 40}
    assert suppress_row(row, k=K) == row


@pytest.mark.parametrize("seed", range(200))
def test_no_small_cell_is_recoverable_from_n_and_the_published_cells(seed):
    rng = random.Random(seed)
    labels = rng.randint(2, 10)
    row = {str(i): rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 30, 80]) for i in range(labels)}
    n = sum(row.values())
    shown = suppress_row(row, k=K)
    assert {lab: v for lab, v in shown.items() if v != SUPPRESSED} == {lab: row[lab] for lab in shown
                                                                        if shown[lab] != SUPPRESSED}
    small = [lab for lab, c in row.items() if 0 < c < K]
    assert all(shown[lab] == SUPPRESSED for lab in small)
    if not small or rows_left_exposed(row, k=K):
        return
    ranges = _attacker_ranges(n, shown)
    assert len(ranges) >= 2
    for lab in small:
        lo, hi = ranges[lab]
        assert lo < K <= hi, (row, shown)   # could be rare or common: neither its count nor its rarity leaks
    # brute force on small rows: every suppressed cell takes several values across consistent completions
    hidden = sorted(ranges)
    total = n - sum(v for v in shown.values() if isinstance(v, int))
    if len(hidden) <= 4 and total <= 40:
        sols = [s for s in itertools.product(range(1, total + 1), repeat=len(hidden)) if sum(s) == total]
        for i, _ in enumerate(hidden):
            assert len({s[i] for s in sols}) >= 2


def test_a_row_without_a_cell_of_k_or_more_is_named_exposed():
    assert rows_left_exposed({"0": 3, "1": 0}, k=K)
    assert rows_left_exposed({"0": 3, "1": 2, "2": 4}, k=K)
    assert not rows_left_exposed({"0": 3, "1": 9}, k=K)


def test_data_summary_passes_the_ledger_small_cell_check_and_states_its_rule(tmp_path):
    from audits.ledger import LedgerWriter

    summary = [{"client": 0, "n": 520, "label_counts": {"0": 300, "1": 150, "2": 69, "3": 0, "4": 1}},
               {"client": 1, "n": 3, "label_counts": {"0": 3, "1": 0}}]
    payload = data_summary(summary, k=K)
    assert payload["suppression"] == "complementary"
    assert payload["clients"]["0"]["n"] == 520 and payload["clients"]["1"]["n"] == "<5"
    with LedgerWriter.open(tmp_path / "run", create=True) as led:
        import hashlib

        (tmp_path / "run" / "config.toml").write_text("x = 1\n")
        led.append("run_start", {"config_hash": hashlib.sha256(b"x = 1\n").hexdigest(), "config": {},
                                 "versions": {}, "hardware": {}, "dp_mode": "off", "secure_agg_mode": "off"})
        led.append("data_summary", payload)


def test_console_table_prints_suppressed_counts(capsys):
    from rich.progress import Progress

    from privfed.cli import RichReporter

    info = {"dataset": "digits", "train": 521, "test": 10, "image": "1×8×8", "parameters": 1000, "device": "cpu",
            "clients": [{"client": 0, "n": 520, "label_counts": {"0": 300, "1": 150, "2": 69, "3": 0, "4": 1}}]}
    with Progress(disable=True) as p:
        RichReporter(p).run_start(total_rounds=1, done_rounds=0, info=info)
    out = capsys.readouterr().out
    assert "0:300" in out and "1:150" in out
    assert "4:1" not in out and "2:69" not in out and "4:s" in out and "2:s" in out
    assert "suppressed" in out


def test_report_flags_an_older_ledger_whose_suppression_can_be_undone(tmp_path):
    """The synthetic run publishes site-b: n = 620, label 0 = 616, label 1 = '<5' (the old rule): 620 − 616 = 4."""
    from audits.report import build_report
    from tests.audits.conftest import write_run

    g = json.loads(build_report(write_run(tmp_path / "run")).json.read_text())["sections"]["data_governance"]
    assert [x["client"] for x in g["undoable"]] == ["site-b"]
    assert "620" in g["undoable"][0]["why"] and "616" in g["undoable"][0]["why"]
