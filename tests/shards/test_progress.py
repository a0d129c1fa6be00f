import io

from shards.progress import PlainProgress, progress


def test_plain_lines_when_not_a_terminal():
    """A log file gets a plain line per interval and one at the end, never carriage returns."""
    out = io.StringIO()
    bar = progress(total=1000, initial=10, desc="finetune", unit="step", file=out)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.0                                   # print on every update
    bar.update(5)
    bar.set_postfix(loss="0.123")
    bar.update(5)
    bar.interval = 3600.0                                # these updates stay silent
    for _ in range(100):
        bar.update(1)
    bar.close()
    bar.close()                                          # a second close prints nothing
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("finetune: 15/1000 step (") and "s left" in lines[0]
    assert lines[1].startswith("finetune: 20/1000 step (") and lines[1].endswith("loss=0.123)")
    assert lines[2].startswith("finetune: 120/1000 step (")


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = progress(total=3, desc="masks", disable=True, file=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
