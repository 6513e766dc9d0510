"""Parsing model answers, merging miners, the label classifier and item quality (no Ray, no model)."""

import math

import numpy as np
import pytest

from deepinterestgr.interests.labels import agreement, choose_threshold, fit_classifier, item_quality, pair_features, truth_match
from deepinterestgr.interests.parsing import (
    ParseError, example_descriptors, merge_descriptors, normalise, parse_caption, parse_descriptors, parse_label,
    parse_label_probability, parse_user_interests,
)
from deepinterestgr.interests.requests import item_request, user_request
from deepinterestgr.prompts import load_template


def test_descriptors_are_found_after_reasoning_normalised_and_deduplicated():
    text = ('Buyers want X. Example shape: {"descriptors": [{"descriptor": "...", "confidence": 0.9}]}\n'
            'Answer: {"descriptors": [{"descriptor": "  Night\u00a0READING. ", "confidence": 0.4},'
            ' {"descriptor": "night reading", "confidence": 0.7}, {"descriptor": "ｆｕｌｌ-width camping", "confidence": 0.9},'
            ' {"descriptor": "too sure", "confidence": 1.5}, {"descriptor": 3, "confidence": 0.5}]} trailing words')
    assert parse_descriptors(text, max_descriptors=5) == [
        {"descriptor": "full-width camping", "confidence": 0.9}, {"descriptor": "night reading", "confidence": 0.7}]
    assert parse_descriptors(text, max_descriptors=1) == [{"descriptor": "full-width camping", "confidence": 0.9}]


@pytest.mark.parametrize("text", [
    "no json here at all",
    '{"descriptors": [{"descriptor": "cut off mid', 
    '{"descriptors": "night reading"}',
    '{"descriptors": [{"descriptor": "...", "confidence": 0.9}]}',
    '{"descriptors": [{"descriptor": "nan confidence", "confidence": NaN}]}',
    '{"other": 1}',
])
def test_answers_without_a_valid_descriptor_are_parse_errors(text):
    with pytest.raises(ParseError):
        parse_descriptors(text, max_descriptors=5)


def test_descriptors_copied_from_the_prompt_example_are_rejected():
    templates = load_template("mine_v1")
    copied = example_descriptors(templates["item_example_assistant"])
    assert len(copied) == 3
    with pytest.raises(ParseError, match="copied"):
        parse_descriptors(templates["item_example_assistant"], 5, copied)
    mixed = '{"descriptors": [{"descriptor": "staying hydrated on hikes", "confidence": 0.9}, {"descriptor": "calligraphy practice", "confidence": 0.6}]}'
    assert parse_descriptors(mixed, 5, copied) == [{"descriptor": "calligraphy practice", "confidence": 0.6}]


def test_merging_miners_keeps_every_source_and_the_highest_confidence():
    merged = merge_descriptors({
        "qwen": [{"descriptor": "night reading", "confidence": 0.6}, {"descriptor": "gift", "confidence": 0.2}],
        "llama": [{"descriptor": "night reading", "confidence": 0.8}, {"descriptor": "camping", "confidence": 0.7}],
    }, max_descriptors=2)
    assert merged == [{"descriptor": "night reading", "confidence": 0.8, "sources": ["llama", "qwen"]},
                      {"descriptor": "camping", "confidence": 0.7, "sources": ["llama"]}]


def test_user_interests_label_and_caption_parsing():
    assert parse_user_interests('I think: {"long_term": ["Home Office", "home office"], "short_term": "Exam  Studying"}') == \
        "long-term: home office; short-term: exam studying"
    with pytest.raises(ParseError):
        parse_user_interests('{"long_term": [], "short_term": ["..."]}')
    assert parse_label('The descriptor is specific. {"label": 1}') == 1
    assert parse_label('{"label": "0"}') == 0
    for bad in ('{"label": 2}', '{"label": true}', "1"):
        with pytest.raises(ParseError):
            parse_label(bad)
    assert parse_caption("  A  red\nmug. ") == "A red mug."
    with pytest.raises(ParseError):
        parse_caption("   ")
    assert normalise("  Ｂｉｒｄ   Watching!! ") == "bird watching"


def test_requests_cut_huge_descriptions_and_keep_the_newest_titles():
    templates = load_template("mine_v1")
    request = item_request(templates, "Lamp", "x" * 100_000, None, 5, max_prompt_tokens=512)
    assert request.truncated and 1500 < sum(len(m["content"]) for m in request.messages) <= 512 * 4
    assert not item_request(templates, "Lamp", "short", None, 5, 512).truncated
    assert "Image shows: a red lamp" in item_request(templates, "Lamp", None, "a red lamp", 5, 512).messages[-1]["content"]
    users = user_request(templates, [f"title number {i}" for i in range(500)], max_prompt_tokens=128)
    text = users.messages[-1]["content"]
    assert users.truncated and "title number 499" in text and "title number 0\n" not in text


def test_the_classifier_learns_a_judge_and_reports_agreement():
    rng = np.random.default_rng(0)
    descriptors, items = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    labels = (descriptors[:, 0] > 0).astype(int)
    features = pair_features(descriptors, items)
    classifier = fit_classifier(features[:150], labels[:150], epochs=300, lr=0.05, weight_decay=0.0, seed=0)
    report = agreement((classifier.probability(features[150:]) >= 0.5).astype(int), labels[150:])
    assert report["agreement"] >= 0.9 and report["agreement_on_0"] >= 0.8 and report["agreement_on_1"] >= 0.8
    again = fit_classifier(features[:150], labels[:150], epochs=300, lr=0.05, weight_decay=0.0, seed=0)
    assert np.array_equal(again.weight, classifier.weight), "same seed, same classifier"
    constant = fit_classifier(features[:10], np.ones(10, dtype=int), 10, 0.05, 0.0, 0)
    assert constant.constant == 1 and (constant.probability(features) == 1).all()


def test_item_quality_is_the_confidence_weighted_share_of_good_descriptors():
    assert item_quality([{"confidence": 0.8, "label": 1}, {"confidence": 0.2, "label": 0}]) == pytest.approx(0.8)
    assert item_quality([{"confidence": 0.5, "label": 0}]) == 0.0
    assert item_quality([]) == 0.0


def test_answers_cut_off_mid_list_keep_their_finished_entries():
    looped = ('It suits smoothies.\n{"descriptors": [{"descriptor": "healthy smoothies", "confidence": 0.9}, '
              '{"descriptor": "Healthy smoothies", "confidence": 0.8}, {"descriptor": "quick breakfasts", "confidence": 0.6}, {"descr')
    assert parse_descriptors(looped, 5) == [{"descriptor": "healthy smoothies", "confidence": 0.9},
                                            {"descriptor": "quick breakfasts", "confidence": 0.6}]
    assert parse_user_interests('{"long_term": ["home office", "calligraphy"], "short_term": ["exam stu') == "long-term: home office, calligraphy"
    with pytest.raises(ParseError):
        parse_descriptors('{"descriptors": [{"descr', 5)


def test_label_probability_reads_both_digits_at_the_first_step_that_has_one():
    steps = [{'{"': 0.0}, {"label": -0.1}, {" 1": math.log(0.7), "0": math.log(0.2), "2": -5.0}, {"}": 0.0}]
    assert parse_label_probability('{"label": 1}', steps) == pytest.approx(0.7 / 0.9)
    # A digit outside the top k is taken as less likely than every token shown.
    only_one = [{"1": -0.05, "x": -3.0}]
    assert 0.95 < parse_label_probability('{"label": 1}', only_one) < 1.0
    # No log-probabilities (a server without them): the answer's label.
    assert parse_label_probability('{"label": 0}', []) == 0.0 and parse_label_probability('{"label": 1}', []) == 1.0
    with pytest.raises(ParseError):
        parse_label_probability("no idea", [])


def test_threshold_separates_own_descriptors_from_other_items_and_truth_matching():
    own = np.array([0.9, 0.8, 0.85, 0.3])  # mostly good, one bad
    other = np.array([0.2, 0.35, 0.1, 0.25, 0.4, 0.45])
    threshold, accuracy = choose_threshold(own, other)
    assert 0.45 < threshold <= 0.8 and accuracy == pytest.approx((0.75 + 1.0) / 2)
    assert choose_threshold(own, np.array([]))[0] == 0.5
    assert truth_match("Baking Bread at home", ["baking bread"]) and not truth_match("gift", ["baking bread"])
