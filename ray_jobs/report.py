"""`dig report --run URI`: write report.md and its PNG plots into the run, from its stage reports."""

from __future__ import annotations

import sys

from deepinterestgr.run_report import build_report
from deepinterestgr.storage.runstore import RunStore
from ray_jobs.common import USER_ERRORS, arg_parser, config_from

STAGES = ("prepare", "mine", "label", "tokenize", "sft", "grpo", "evaluate")


def write(store: RunStore) -> str:
    """Build the report of whatever stages the run committed; returns the report's URI."""
    reports = {stage: entry.report for stage in STAGES if (entry := store.entry(stage)) is not None}
    if not reports:
        raise ValueError(f"{store.uri} holds no committed stage: nothing to report")
    report = build_report(reports, store.uri)
    for name, png in report.plots.items():
        store.write_atomic(f"report/{name}", png)
    store.write_atomic("report/report.md", report.markdown.encode())
    return store.uri_of(f"{store.root}/report/report.md")


def main(argv: list[str] | None = None) -> int:
    args = arg_parser("report", "Write report.md and PNG plots into a run from its committed stages.").parse_args(argv)
    try:
        where = write(RunStore(config_from(args)))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"dig report: error: {exc}", file=sys.stderr)
        return 2
    print(f"dig report: wrote {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
