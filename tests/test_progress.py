"""Progress lines where stderr is not a terminal: a heartbeat before the first result, then rate and ETA."""

import time

from deepinterestgr.progress import Progress


def test_a_heartbeat_says_it_waits_then_lines_give_rate_and_eta_and_close_stops_it(capsys):
    with Progress("items (smollm2)", 100, "rows", every_s=0.05, heartbeat=True) as bar:
        time.sleep(0.18)
        waiting = capsys.readouterr().err.splitlines()
        time.sleep(0.06)
        bar.update(25)
        time.sleep(0.12)
        after = capsys.readouterr().err.splitlines()
    time.sleep(0.15)
    assert len(waiting) >= 2 and all("0/100 rows" in line and "waiting for the first results" in line for line in waiting)
    counted = [line for line in after if "waiting" not in line]
    assert counted and all("25/100 rows" in line and "/s, " in line and "ETA" in line for line in counted)
    assert capsys.readouterr().err == "", "no line after close"


def test_without_heartbeat_only_updates_print_and_the_last_one_always():
    import io
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        bar = Progress("sasrec", 3, "epochs", every_s=60)
        time.sleep(0.05)
        bar.update(1)
        bar.update(2)
    assert err.getvalue().splitlines() == [err.getvalue().splitlines()[-1]] and "3/3 epochs" in err.getvalue()
