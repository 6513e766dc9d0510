"""The pretrained-LLM backbone with SmolLM2-135M-Instruct's real weights: SID tokens, LoRA, sft + evaluate."""

import pytest
import torch

from deepinterestgr.config import LLMBackboneConfig, load_config
from deepinterestgr.recommender.artifacts import load_catalog, load_format, load_model, load_meta
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.backbones.llm import TextFormat, pretrained_model
from deepinterestgr.recommender.model import export_model
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import evaluate, prepare, sft, tokenize


def test_lora_trains_only_adapters_and_sid_rows_and_merges_into_a_plain_model(smollm2):
    untrained, vocab, _ = pretrained_model(smollm2, [8, 8], LLMBackboneConfig(lora_r=4), seed=0)
    initial = export_model(untrained).get_input_embeddings().weight.detach().clone()
    assert vocab.offset == 49152 and vocab.size == initial.shape[0] == 49152 + 16
    sid = slice(vocab.offset, vocab.size)
    assert initial[sid].std(dim=0).mean() > 0, "SID rows start distinct"

    model, vocab, _ = pretrained_model(smollm2, [8, 8], LLMBackboneConfig(lora_r=4), seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[1, 504, 3, vocab.offset + 2, vocab.offset + 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    merged = export_model(model)
    assert type(merged).__name__ == "LlamaForCausalLM", "LoRA merged away: serving loads a plain model"
    weights = merged.get_input_embeddings().weight
    assert torch.equal(weights[: vocab.offset], initial[: vocab.offset]), "the pretrained vocabulary is frozen"
    assert not torch.equal(weights[sid], initial[sid]), "the SID rows are trained"
    assert merged.lm_head.weight.data_ptr() == weights.data_ptr(), "output layer still tied"
    q_proj = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_proj, export_model(pretrained_model(smollm2, [8, 8], LLMBackboneConfig(lora_r=0), seed=0)[0]).model.layers[0].self_attn.q_proj.weight), "LoRA update merged"


def test_llm_sft_with_two_workers_then_evaluate_with_text_prompts(ray_cluster, tmp_path):
    cfg = load_config(None, [
        f"storage.uri={tmp_path}", "data.synthetic.num_items=12", "data.synthetic.num_users=8",
        "data.synthetic.max_sequence=6", "tokenize.method=rkmeans", "tokenize.rqvae.codebook_size=8",
        "tokenize.rqvae.levels=2", "sft.backbone=llm", "sft.llm.lora_r=4", "sft.llm.windows_per_user=1",
        "sft.epochs=2", "sft.lr=3e-3", "sft.batch_size=16", "sft.max_items=4", "sft.num_workers=2",
        "sft.beam_width=5", "evaluate.beam_width=5", "evaluate.sasrec.enabled=false",
    ])
    store = RunStore(cfg)
    prepare.run(cfg, store)
    tokenize.run(cfg, store)
    report = sft.run(cfg, store).report
    assert report["backbone"] == "llm" and report["user_examples"] == 8
    assert report["examples"] == 8 + 2 * 12, "one next-item example per user, two alignment tasks per item"
    assert report["history"][1]["loss"] < report["history"][0]["loss"]

    catalog = load_catalog(store)
    meta = load_meta(store, "sft")
    assert (meta.backbone, meta.template, meta.vocab_offset) == ("llm", "sft_v1", 49152)
    assert load_model(store, "sft").config.vocab_size == 49152 + sum(catalog.trie.sizes)
    assert isinstance(load_format(store, "sft", catalog), TextFormat), "the tokenizer travels with the model"

    results = evaluate.run(cfg, store).report["results"]
    gr = results["GR (sft) x1"]
    assert 0 <= gr["ndcg@10"] <= gr["hr@10"] <= 1 and set(results) == {"GR (sft) x1", "most-popular"}


@pytest.mark.parametrize("backbone", ["compact", "encoder_decoder", "llm"])
def test_the_model_folders_metadata_counts_the_members_of_every_backbone(backbone):
    """recommender.json's `members` is what load_model reads: a backbone that dropped it would rank with member 0 alone."""
    cfg = load_config(None, [f"sft.backbone={backbone}", "sft.members=3", "pipeline.stages=[prepare,tokenize,sft,evaluate]"])
    meta, _ = backbones.get(cfg.sft.backbone).meta(cfg.sft, [8, 8], 24)
    assert (meta.backbone, meta.members) == (backbone, 3)


@pytest.mark.parametrize("pack_tokens", [0, 64])
def test_labelled_logits_give_the_loss_and_gradients_of_logits_everywhere(smollm2, pack_tokens):
    """SmolLM2's real weights with LoRA, a batch of examples of several lengths and label starts (one row
    per example, or packed): the output layer at labelled positions only changes no figure."""
    from deepinterestgr.recommender.formats import Example
    from deepinterestgr.recommender.sft_loop import sft_loss

    model, vocab, _ = pretrained_model(smollm2, [8, 8], LLMBackboneConfig(lora_r=4), seed=0)
    model.eval()  # no dropout: both passes compute the same function
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, start in ((9, 6), (23, 20), (15, 3), (31, 29)):
        ids = torch.randint(0, 49152, (length - 2,), generator=generator).tolist() + [vocab.offset + 1, vocab.offset + 12]
        examples.append(Example(ids, start))
    batch = backbones.get("llm").training_batch(examples, 0, pack_tokens)
    for smoothing in (0.0, 0.1):  # 0: the model's own loss; 0.1: the loop's cross-entropy
        figures = []
        for labelled in (False, True):
            model.zero_grad()
            loss = sft_loss(model, batch, label_smoothing=smoothing, labelled_logits=labelled)
            loss.backward()
            figures.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        (everywhere, grads), (labelled, labelled_grads) = figures
        assert torch.isclose(everywhere, labelled, rtol=1e-5)
        for a, b in zip(grads, labelled_grads):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
        assert any(g.abs().sum() > 0 for g in grads), "the loss reaches the adapters"
    with pytest.raises(ValueError, match="item head"):
        sft_loss(model, batch, item_head=0.5, labelled_logits=True)
