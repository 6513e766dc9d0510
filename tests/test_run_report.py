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


def _metrics(ndcg):
    return {"hr@10": 2 * ndcg, "ndcg@10": ndcg}


def test_a_run_evaluated_before_validation_ranking_still_reports_and_says_what_it_lacks():
    old = {"test_users": 10, "items": 5, "results": {"GR (sft)": _metrics(0.2), "SASRec": _metrics(0.1)}}
    text = build_report({"evaluate": old}, "run").markdown
    assert "| GR (sft) | 0.4000 | 0.2000 |" in text and "| SASRec | 0.2000 | 0.1000 |" in text
    assert "evaluated before validation users were ranked" in text


def test_a_run_with_validation_figures_and_a_sasrec_grid_lists_both():
    new = {"test_users": 10, "items": 5, "results": {"GR (sft) x2": _metrics(0.2), "SASRec x2": _metrics(0.1)},
           "validation": {"GR (sft) x2": _metrics(0.3), "SASRec x2": _metrics(0.15)},
           "sasrec": {"members": 2, "chosen": {"lr": 0.01}, "fits": 3, "seconds": 12.0,
                      "grid": [{"settings": {"lr": 0.001}, "val_ndcg@10": 0.12, "epochs_run": 20, "seconds": 4.0},
                               {"settings": {"lr": 0.01}, "val_ndcg@10": 0.15, "epochs_run": 10, "seconds": 3.0}]}}
    text = build_report({"evaluate": new}, "run").markdown
    validation = text[text.index("Validation users"):]
    assert "| SASRec x2 | 0.3000 | 0.1500 |" in validation and "before validation" not in text
    assert "| {'lr': 0.01} | 0.1500 | 10 | 3 |" in text and "kept: {'lr': 0.01}, then 2 seed(s)" in text
    assert "evaluated before evaluate bootstrapped its ratios to SASRec" in text, "a run from before the intervals says so"
    interval = {"ratio": 2.0, "low": 1.5, "high": 2.6, "level": 0.95, "samples": 1000, "metric": "ndcg@10"}
    new["intervals"] = {"validation": {"SASRec x2": interval}, "test": {"SASRec x2": {**interval, "low": 0.9}}}
    text = build_report({"evaluate": new}, "run").markdown
    assert "GR (sft) x2's NDCG@10 over SASRec's, with a 95% paired bootstrap interval" in text
    assert "- validation, over SASRec x2: 2.000 (1.500-2.600)" in text and "- test, over SASRec x2: 2.000 (0.900-2.600)" in text
    assert "evaluated before evaluate bootstrapped" not in text


def test_example_users_show_history_top_items_with_interests_and_mark_the_target():
    item = lambda i, interests=(): {"item_id": i, "title": f"title {i}", "interests": list(interests)}  # noqa: E731
    hit = {"user_id": "u1", "interests": "night reading", "history": [item("a"), item("b")], "rank": 2,
           "top": [item("c", ["camping"]), item("t", ["reading lamp"])], "target": {"item_id": "t", "title": "title t"}}
    miss = {**hit, "user_id": "u2", "interests": None, "rank": None, "top": [item("c")]}
    text = build_report({"evaluate": {"test_users": 2, "items": 4, "results": {"GR (sft)": _metrics(0.2)},
                                      "examples": [hit, miss]}}, "run").markdown
    section = text[text.index("## Example users"):]
    assert "**User u1** (mined interests: night reading)" in section and "Last items: title a; title b" in section
    assert "| **title t** | reading lamp |" in section and "| title c | camping |" in section
    assert "Target: title t (GR ranked it 2)" in section and "Target: title t (not in GR's beam)" in section
    assert "| title c | - |" in section, "an item without mined interests says so"


def test_the_demos_closing_table_gives_gr_over_sasrec_with_its_interval():
    from ray_jobs.pipeline import table

    interval = {"ratio": 1.006, "low": 0.931, "high": 1.082, "level": 0.95, "samples": 1000, "metric": "ndcg@10"}
    result = {"test": {"GR (sft) x2": {"hr@10": 0.3, "ndcg@10": 0.2}, "SASRec x2": {"hr@10": 0.3, "ndcg@10": 0.2}},
              "intervals": {"validation": {"SASRec x2": interval}, "test": {"SASRec x2": {**interval, "ratio": 0.994}}},
              "seconds": {"sft": 1.0}, "run": "r", "report": "r/report.md"}
    text = table(result)
    assert "- validation, over SASRec x2: 1.006 (0.931-1.082)" in text and "- test, over SASRec x2: 0.994 (0.931-1.082)" in text
    assert "over SASRec's" not in table({**result, "intervals": {}}), "a run evaluated before the intervals prints none"
