import pytest
import yaml

from deepinterestgr.config import ConfigError, RunConfig, load_config


def test_defaults_are_the_embedded_synthetic_run():
    cfg = load_config()
    assert cfg.data.loader == "synthetic"
    assert cfg.storage.uri == "runs/default"


def test_yaml_file_and_overrides_are_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\ndata:\n  loader: recbole\n  path: /x\n")
    cfg = load_config(path, ["data.kcore=5", "data.drop_bad_rows=true", "storage.uri=s3://b/p"])
    assert (cfg.seed, cfg.data.loader, cfg.data.kcore, cfg.data.drop_bad_rows) == (3, "recbole", 5, True)
    assert cfg.storage.uri == "s3://b/p"


@pytest.mark.parametrize(
    "override, named",
    [
        ("data.kcor=5", "data.kcor: unknown key"),
        ("data.kcore=five", "data.kcore"),
        ("data.loader=csv", "data.loader"),
        ("data.synthetic.min_sequence=30", "min_sequence (30) exceeds max_sequence"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
        ("evaluate.sasrec.members=0", "evaluate.sasrec.members"),
        ("evaluate.sasrec.grid={dropout: [0.2, 1.5]}", "evaluate.sasrec.grid: .*grid.dropout: 1.5 is out of range"),
        ("evaluate.sasrec.grid={hidden: [64]}", "grid.hidden: not a SASRec setting"),
        ("evaluate.sasrec.grid={lr: []}", "grid.lr: give at least one value"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["data.kcore"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  loadr: jsonl\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*data.loadr: unknown key"):
        load_config(path)


def test_section_hash_follows_the_section_and_seed():
    base = RunConfig()
    assert base.section_hash("data") == RunConfig().section_hash("data")
    assert base.section_hash("data") != load_config(None, ["data.kcore=2"]).section_hash("data")
    assert base.section_hash("data") != load_config(None, ["seed=1"]).section_hash("data")
    assert base.section_hash("data") == load_config(None, ["storage.uri=/elsewhere"]).section_hash("data")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["data.kcore=4", "seed=9"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_pinned_config_carries_an_absolute_local_run_path_to_ray_workers():
    from pathlib import Path

    from deepinterestgr.storage.filesystem import pinned

    relative = load_config(None, ["storage.uri=runs/x"])
    assert pinned(relative).storage.uri == str(Path("runs/x").resolve()) and relative.storage.uri == "runs/x"
    remote = load_config(None, ["storage.uri=s3://bucket/runs/x"])
    assert pinned(remote).storage.uri == "s3://bucket/runs/x"


def test_options_of_another_backbone_are_errors_that_name_the_key():
    with pytest.raises(ConfigError, match="sft.llm applies only to sft.backbone=llm"):
        load_config(None, ["sft.backbone=encoder_decoder", "sft.llm.lora_r=4"])
    with pytest.raises(ConfigError, match="sft.layers applies only to the from-scratch backbones"):
        load_config(None, ["sft.backbone=llm", "sft.layers=4"])
    with pytest.raises(ConfigError, match="sft.backbone"):
        load_config(None, ["sft.backbone=transformer"])
    with pytest.raises(ConfigError, match="sft.item_tokens applies only to the from-scratch backbones"):
        load_config(None, ["sft.backbone=llm", "sft.item_tokens=true"])
    with pytest.raises(ConfigError) as refused:
        load_config("configs/default.yaml", ["sft.backbone=llm"])
    hint = str(refused.value).split("(set ")[1].split(")")[0].split()
    assert {k.split("=")[0] for k in hint} == {"sft.item_tokens", "sft.item_head", "sft.item_token_dropout", "sft.item_token_init",
                                               "sft.embedding_dropout"}
    assert load_config("configs/default.yaml", ["sft.backbone=llm", *hint]).sft.backbone == "llm", "the hint is all it takes"
    with pytest.raises(ConfigError, match="sft.item_head applies only to sft.backbone=compact"):
        load_config(None, ["sft.backbone=encoder_decoder", "sft.item_tokens=true", "sft.item_head=0.5"])
    with pytest.raises(ConfigError, match="sft.item_head needs sft.item_tokens=true"):
        load_config(None, ["sft.item_tokens=false", "sft.item_head=0.5"])
    with pytest.raises(ConfigError, match="sft.item_score_weight applies only with sft.item_head > 0"):
        load_config(None, ["sft.item_score_weight=3"])
    with pytest.raises(ConfigError, match="sft.item_token_dropout needs sft.item_tokens=true"):
        load_config(None, ["sft.item_tokens=false", "sft.item_token_dropout=0.2"])
    with pytest.raises(ConfigError, match="sft.item_token_init applies only with sft.item_tokens=true"):
        load_config(None, ["sft.item_tokens=false", "sft.item_token_init=content"])
    with pytest.raises(ConfigError, match="sft.embedding_dropout applies only to the from-scratch backbones"):
        load_config(None, ["sft.backbone=llm", "sft.embedding_dropout=0.1"])
    with pytest.raises(ConfigError, match=r"^invalid config: sft.members=3 trains an ensemble, which grpo cannot tune: set sft.members=1, "
                                          r"distil the members into one model \(sft.distill\), or leave grpo out of pipeline.stages$"):
        load_config(None, ["sft.members=3"])
    assert load_config(None, ["sft.members=3", "pipeline.stages=[prepare,tokenize,sft,evaluate]"]).sft.members == 3
    assert load_config(None, ["sft.members=3", "sft.distill=3"]).sft.distill == 3, "grpo tunes the one distilled model"
    with pytest.raises(ConfigError, match="sft.distill distils the members into one model: it needs sft.members >= 2, not 1"):
        load_config(None, ["sft.distill=3"])
    with pytest.raises(ConfigError, match="sft.distill is built for sft.backbone=compact, not encoder_decoder"):
        load_config(None, ["sft.backbone=encoder_decoder", "sft.members=2", "sft.distill=3"])
    encdec = load_config(None, ["sft.backbone=encoder_decoder", "sft.layers=3"])
    assert RunConfig.model_validate(yaml.safe_load(encdec.to_yaml())) == encdec, "a resolved config still loads"
