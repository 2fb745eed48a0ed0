"""The CLI's contract for bad input, checked in one place: exit code 2, one stderr line `privfed: error: …` naming
the problem, and nothing written where the command would have written."""

from pathlib import Path

from privfed.cli import main


def assert_refused(capsys, argv: list[str], *, match: str = "", nothing_at: Path | None = None,
                   ignore_case: bool = False) -> str:
    """Run ``privfed ARGV``; assert it exits 2 with one ``privfed: error:`` line containing `match` (case-folded
    when `ignore_case`) and, when given, that `nothing_at` does not exist afterwards. Returns the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("privfed: error:"), err
    assert (match.lower() in err.lower()) if ignore_case else (match in err), err
    if nothing_at is not None:
        assert not nothing_at.exists(), f"{nothing_at} was written"
    return err
