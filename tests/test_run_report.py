"""The run report's judgement of the judge, from label reports of both kinds."""

from deepinterestgr.run_report import build_report, label_balance


def _label(rate):
    return {"judged": 40, "judge_positive_rate": rate, "holdout": {"agreement": 0.8}}


def test_a_judge_that_gives_one_label_is_called_degenerate_and_claims_no_agreement():
    assert label_balance(_label(0.97)) == (0.97, True)
    text = build_report({"label": _label(0.97)}, "run").markdown
    assert "judge is degenerate" in text and "held-out pairs" not in text


def test_a_balanced_judge_reports_its_held_out_agreement():
    assert label_balance(_label(0.4)) == (0.4, False)
    text = build_report({"label": _label(0.4)}, "run").markdown
    assert "degenerate" not in text and "held-out pairs: 0.8" in text
