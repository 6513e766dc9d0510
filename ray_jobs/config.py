"""`dig config`: the effective run config (defaults filled in, file and overrides applied) as YAML, or
with `--reference` every key's type, default, bounds and meaning as markdown (docs/config-reference.md)."""

from __future__ import annotations

import sys

from deepinterestgr.config_reference import reference
from ray_jobs.common import USER_ERRORS, arg_parser, config_from


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("config", "Print the effective run config as YAML: every key, defaults filled in, "
                                  "the --config file and --set overrides applied. Starts nothing.")
    parser.add_argument("--show", action="store_true", help="print the effective config (what `dig config` does; kept for scripts that say so)")
    parser.add_argument("--reference", action="store_true",
                        help="print every config key (type, default, bounds, meaning) as markdown: docs/config-reference.md")
    args = parser.parse_args(argv)
    if args.reference:
        print(reference(), end="")
        return 0
    try:
        cfg = config_from(args)
    except USER_ERRORS as exc:
        print(f"dig config: error: {exc}", file=sys.stderr)
        return 2
    print(cfg.to_yaml(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
