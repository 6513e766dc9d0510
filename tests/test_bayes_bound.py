"""bench/bayes_bound.py: the synthetic generator's own posterior, checked where its answer is known in closed form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.synthetic.num_items=60", "data.synthetic.num_users=80"]


def _bound(*overrides: str) -> dict:
    args = [sys.executable, str(ROOT / "bench" / "bayes_bound.py"), "--seeds", "1"]
    for override in (*SMALL, *overrides):
        args += ["--set", override]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["mean"]


def test_pure_noise_makes_every_item_equally_likely_so_the_bound_is_chance():
    bound = _bound("data.synthetic.noise=1.0")
    # Every item ties: the target lands in the top 10 of 60 with probability 10/60, whatever the history.
    for name in ("bayes", "known_interests"):
        assert bound[f"{name}_hr@10"] == pytest.approx(10 / 60, abs=1e-4)
        assert bound[f"{name}_val_hr@10"] == pytest.approx(10 / 60, abs=1e-4)


def test_without_noise_the_posterior_beats_chance_and_knowing_the_interests_does_not_hurt():
    bound = _bound("data.synthetic.noise=0.0", "data.synthetic.max_user_interests=1")
    assert bound["bayes_hr@10"] > 3 * 10 / 60
    # One interest, no noise: after the first item the posterior holds the user's interest set (or sets
    # tied with it), so being told it gains little; never less, up to sampling of which items tie.
    assert bound["known_interests_hr@10"] >= bound["bayes_hr@10"] - 0.02
