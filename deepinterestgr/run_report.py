"""A run's report: `report.md` and PNG plots built from its committed stage reports, nothing else.

Pure: `build_report(reports)` takes {stage: report dict} (the manifests' `report` fields) and returns
the markdown and the PNG bytes by file name, so the same figures can be checked against the stage
reports they come from. Stages that did not run are left out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first: no display on clusters)

# Below this share of the minority label, the judge's labels carry no information.
DEGENERATE_SHARE = 0.10


@dataclass
class Report:
    """The markdown of report.md and the plots it links, as PNG bytes by file name."""

    markdown: str
    plots: dict[str, bytes] = field(default_factory=dict)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics(evaluate: dict) -> list[str]:
    results = evaluate["results"]
    names = sorted(next(iter(results.values())))
    lines = [f"Test split: {evaluate.get('test_users')} users, {evaluate.get('items')} items, beam {evaluate.get('beam_width')}, "
             f"history {'excluded' if evaluate.get('exclude_history') else 'kept'}.", "",
             "| model | " + " | ".join(n.upper() for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for model, metrics in results.items():
        lines.append(f"| {model} | " + " | ".join(_fmt(metrics[n]) for n in names) + " |")
    if "validation" in evaluate:
        lines += ["", "Validation users (settings are compared here):", "", "| model | " + " | ".join(n.upper() for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {model} | " + " | ".join(_fmt(metrics[n]) for n in names) + " |" for model, metrics in evaluate["validation"].items()]
    else:
        lines += ["", "This run was evaluated before validation users were ranked: no validation figures."]
    sasrec = evaluate.get("sasrec")
    if sasrec and sasrec.get("grid"):
        lines += ["", f"SASRec settings tried (each with the run's seed; kept: {sasrec['chosen']}, then {sasrec['members']} seed(s); "
                      f"{sasrec['fits']} fits in {sasrec['seconds']:.0f} s):", "",
                  "| settings | validation NDCG@10 | epochs | seconds |", "|---|---|---|---|"]
        lines += [f"| {point['settings']} | {point['val_ndcg@10']:.4f} | {point['epochs_run']} | {point['seconds']:.0f} |" for point in sasrec["grid"]]
    if evaluate.get("intervals"):
        lines += ["", *interval_lines(evaluate["intervals"], next(m for m in results if m.startswith("GR")))]
    elif sasrec:
        lines += ["", "This run was evaluated before evaluate bootstrapped its ratios to SASRec: no intervals (rerun `dig evaluate`)."]
    return lines


def interval_lines(intervals: dict[str, dict[str, dict]], gr: str) -> list[str]:
    """evaluate's `intervals` as a reader reads them: GR's figure over each SASRec row's, per split."""
    first = next(i for by_model in intervals.values() for i in by_model.values())
    lines = [f"{gr}'s {first['metric'].upper()} over SASRec's, with a {first['level']:.0%} paired bootstrap interval over the users:", ""]
    for split, by_model in intervals.items():
        lines += [f"- {split}, over {name}: {i['ratio']:.3f} ({i['low']:.3f}-{i['high']:.3f})" for name, i in by_model.items()]
    return lines


def _points(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["epoch"] + 1, h["val_ndcg@10"]) for h in history]


def validation_curves(reports: dict) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Validation NDCG@10 per epoch, by panel (sft, grpo, SASRec) and line: every sft member, and the model
    distilled from them, has its own line (runs from before members kept their history show the first member only)."""
    curves: dict[str, dict[str, list]] = {}
    if "sft" in reports:
        members = [m for m in reports["sft"].get("members", []) if m.get("history")]
        curves["sft"] = ({f"member {k + 1} (seed {m['seed']})": _points(m["history"]) for k, m in enumerate(members)} if members
                         else {"sft": _points(reports["sft"].get("history", []))})
        if "distilled" in reports["sft"]:
            curves["sft"][f"distilled (seed {reports['sft']['distilled']['seed']})"] = _points(reports["sft"]["distilled"]["history"])
    if "grpo" in reports:
        curves["grpo"] = {"grpo": _points(reports["grpo"].get("history", []))}
    if "evaluate" in reports and reports["evaluate"].get("sasrec_history"):
        curves["SASRec"] = {"SASRec": _points(reports["evaluate"]["sasrec_history"])}
    return {panel: {name: p for name, p in lines.items() if p} for panel, lines in curves.items() if any(lines.values())}


def _examples(examples: list[dict]) -> list[str]:
    """Each example test user: last items, GR's top 5 with the items' mined interests, the target."""
    lines = []
    for example in examples:
        rank = f"GR ranked it {example['rank']}" if example["rank"] else "not in GR's beam"
        lines += [f"**User {example['user_id']}**" + (f" (mined interests: {example['interests']})" if example.get("interests") else ""), "",
                  "Last items: " + "; ".join(i["title"] or i["item_id"] for i in example["history"]), "",
                  "| GR's top 5 | mined interests of the item |", "|---|---|"]
        lines += [f"| {'**' if i['item_id'] == example['target']['item_id'] else ''}{i['title'] or i['item_id']}"
                  f"{'**' if i['item_id'] == example['target']['item_id'] else ''} | {', '.join(i['interests']) or '-'} |"
                  for i in example["top"]]
        lines += ["", f"Target: {example['target']['title'] or example['target']['item_id']} ({rank}).", ""]
    return lines


def _validation_plot(reports: dict) -> bytes | None:
    curves = validation_curves(reports)
    if not curves:
        return None
    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, lines) in zip(axes[0], curves.items()):
        for label, points in lines.items():
            ax.plot(*zip(*points), marker="o", label=label)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_title(f"{name}: validation NDCG@10")
        ax.set_xlabel("epoch (0 = before training)" if name == "grpo" else "epoch")
        ax.grid(alpha=0.3)
    return _png(figure)


def _reward_plot(grpo: dict) -> bytes | None:
    epochs = [h for h in grpo.get("history", []) if h["epoch"] >= 0]
    terms = sorted({k for h in epochs for k in h if k.startswith("reward_")})
    if not epochs or not terms:
        return None
    figure, ax = plt.subplots(figsize=(5.5, 3.2))
    for term in terms:
        ax.plot([h["epoch"] + 1 for h in epochs], [h.get(term, 0.0) for h in epochs], marker="o", label=term[len("reward_"):])
    ax.set_title("GRPO: mean reward per term")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(figure)


def _sid_plot(tokenize: dict) -> bytes | None:
    levels = tokenize.get("levels") or []
    if not levels:
        return None
    figure, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar([f"level {i + 1}" for i in range(len(levels))], [lv["utilisation"] for lv in levels])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"SID codebook utilisation (collisions {tokenize.get('collision_rate_before', 0):.1%} before, "
                 f"{tokenize.get('collision_rate_after', 0):.1%} after)", fontsize=9)
    return _png(figure)


def label_balance(label: dict) -> tuple[float | None, bool]:
    """(share of pairs the judge labelled 1, whether one label covers almost everything)."""
    rate = label.get("judge_positive_rate")
    if rate is None:
        return None, False
    return rate, min(rate, 1 - rate) < DEGENERATE_SHARE


def build_report(reports: dict[str, dict], run_uri: str) -> Report:
    """report.md and its plots from the stage reports of one run."""
    lines = [f"# Run report: {run_uri}", ""]
    plots: dict[str, bytes] = {}
    if "prepare" in reports:
        p = reports["prepare"]
        after = p.get("after_filter", {})
        lines += ["## Data", "", f"{after.get('users')} users, {after.get('items')} items, {after.get('interactions')} interactions "
                  f"after {p.get('kcore', {}).get('k')}-core; split {p.get('split')}; dropped rows {p.get('dropped_rows') or 'none'}.", ""]
    if "evaluate" in reports:
        lines += ["## Ranking quality", "", *_metrics(reports["evaluate"]), ""]
    if (png := _validation_plot(reports)) is not None:
        plots["validation.png"] = png
        lines += ["## Validation curves", "", "![validation NDCG@10 per epoch](validation.png)", ""]
        for stage in ("sft", "grpo"):
            if stage in reports:
                r = reports[stage]
                lines.append(f"- {stage}: best epoch {r.get('best_epoch')}, validation HR@10 {_fmt(r.get('val_hr@10'))}, "
                             f"NDCG@10 {_fmt(r.get('val_ndcg@10'))}" + (f"; {r['kept']}" if r.get("kept") else ""))
        lines.append("")
    if "grpo" in reports and (png := _reward_plot(reports["grpo"])) is not None:
        plots["grpo_rewards.png"] = png
        lines += ["## GRPO reward terms", "", "![GRPO reward terms per epoch](grpo_rewards.png)", ""]
    if "evaluate" in reports and reports["evaluate"].get("examples"):
        lines += ["## Example users", "", *_examples(reports["evaluate"]["examples"]), ""]
    if "tokenize" in reports:
        t = reports["tokenize"]
        lines += ["## Semantic IDs", "", f"Method {t.get('method')}, {t.get('items')} items, collision rate "
                  f"{_fmt(t.get('collision_rate_before'))} before and {_fmt(t.get('collision_rate_after'))} after "
                  f"disambiguation ({t.get('disambiguation')}).", "",
                  "| level | utilisation | perplexity |", "|---|---|---|"]
        lines += [f"| {i + 1} | {lv['utilisation']:.3f} | {lv['perplexity']:.1f} |" for i, lv in enumerate(t.get("levels", []))]
        if (png := _sid_plot(t)) is not None:
            plots["sids.png"] = png
            lines += ["", "![SID utilisation per level](sids.png)"]
        lines.append("")
    if "mine" in reports:
        m = reports["mine"]
        lines += ["## Interest mining", "", "| miner | rows | parsed | parse rate | rows/s |", "|---|---|---|---|---|"]
        for name, stats in {**m.get("miners", {}), **({"users": m["users"]} if m.get("users") else {})}.items():
            rows = stats.get("rows") or 0
            lines.append(f"| {name} | {rows} | {stats.get('answered')} | {_fmt((stats.get('answered') or 0) / rows if rows else None)} | "
                         f"{stats.get('rows_per_s')} |")
        lines += ["", f"{m.get('items_with_descriptors')} of {m.get('items_mined')} mined items got descriptors; "
                  f"{m.get('descriptors_per_item')} descriptors per item.", ""]
    if "label" in reports:
        rate, degenerate = label_balance(reports["label"])
        lines += ["## Reward labels", "", f"{reports['label'].get('judged')} (item, descriptor) pairs judged; "
                  f"label 1 on {_fmt(rate)} of them, label 0 on {_fmt(None if rate is None else 1 - rate)}."]
        if degenerate:
            lines.append(f"**The judge is degenerate**: one label covers more than {1 - DEGENERATE_SHARE:.0%} of pairs, so its labels "
                         "carry no information and no agreement is claimed.")
        else:
            lines.append(f"Classifier agreement with the judge on held-out pairs: {_fmt(reports['label'].get('holdout', {}).get('agreement'))}.")
        lines.append("")
    return Report("\n".join(lines), plots)
