"""`dig`: one subcommand per pipeline stage; each is also `python -m ray_jobs.<stage>`."""

from __future__ import annotations

import importlib
import sys

STAGES = ["prepare", "mine", "label", "tokenize", "sft", "grpo", "evaluate", "serve", "pipeline", "report", "config"]

USAGE = """usage: dig <stage> [--config FILE] [--set key=value ...] [--run URI]

stages, in pipeline order:
  prepare   raw data -> items + leave-last-out interactions
  mine      LLM deep-interest mining (items and users)
  label     reward labels for descriptors, item quality
  tokenize  embeddings, RQ-VAE, unique Semantic IDs
  sft       supervised fine-tuning of the generative recommender
  grpo      GRPO with the interest-aware reward
  evaluate  HR@K / NDCG@K against baselines
  serve     Ray Serve HTTP endpoint
  pipeline  every stage above in one Ray job
  report    report.md + plots in the run, from its stage reports
  config    print the effective config (defaults filled in, overrides applied)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"dig: unknown stage {stage!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return importlib.import_module(f"ray_jobs.{stage}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
