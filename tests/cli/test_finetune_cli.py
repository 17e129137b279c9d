"""`metriclearn train --encoder sentence:DIR --finetune`: which weights move, the run directory, resume, bad input.

A tiny BERT built offline from a config (the ``tiny_bert_dir`` fixture: a BertForSequenceClassification folder,
so the encoder inside a sequence classifier is exercised too) keeps every run to a few seconds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, invoke, kill_train_at

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers", reason="needs the 'text' extra")

WORDS = {  # uneven classes: 11, 9, 7 and 6 texts
    "animals": ["dog", "cat", "horse", "rabbit", "parrot", "goat", "sheep", "mouse", "tiger", "whale", "owl"],
    "food": ["pizza", "soup", "bread", "salad", "cheese", "rice", "pasta", "cake", "apple"],
    "music": ["guitar", "piano", "violin", "drum", "trumpet", "flute", "cello"],
    "travel": ["airport", "hotel", "passport", "beach", "ticket", "suitcase"],
}
FAST = ["--epochs", "2", "--batch-size", "10", "--samples-per-class", "2", "--embedding-dim", "8",
        "--device", "cpu", "--quiet", "--threads", "1"]


@pytest.fixture
def texts(tmp_path):
    rows = [{"text": f"tell me about the {word} please", "label": topic} for topic, words in WORDS.items()
            for word in words]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _original(folder) -> dict[str, torch.Tensor]:
    """The transformer weights of the model folder, as AutoModel reads them (the base inside the classifier)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder), local_files_only=True).state_dict()


def _trained(run) -> dict[str, torch.Tensor]:
    from metriclearn.training import load_run

    return load_run(run).model.transformer.state_dict()


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_finetune_moves_all_blocks_unfreeze_only_the_top_and_frozen_nothing(tmp_path, texts, tiny_bert_dir) -> None:
    """Three real CLI runs side by side (~10 s on a busy 2-core machine): the weights each may move."""
    original = _original(tiny_bert_dir)
    encoder = f"sentence:{tiny_bert_dir}"
    runs = {}
    for name, flags in (("frozen", []), ("all", ["--finetune"]), ("top1", ["--finetune", "--unfreeze", "1"])):
        runs[name] = tmp_path / name
        result = invoke("train", "--data", texts, "--encoder", encoder, *flags, "--encoder-lr", "1e-3", *FAST,
                        "--out", runs[name])
        assert result.exit_code == 0, result.output
    frozen = torch.load(runs["frozen"] / "model.pt", weights_only=True)
    assert set(frozen["state_dict"]) == {"head.weight", "head.bias"}  # the frozen transformer is not saved
    assert not _changed(original, _trained(runs["frozen"]))
    moved = _changed(original, _trained(runs["all"]))
    assert {k.split(".")[2] for k in moved if k.startswith("encoder.layer.")} == {"0", "1", "2"}
    assert any(k.startswith("embeddings.") for k in moved)
    payload = torch.load(runs["all"] / "model.pt", weights_only=True)
    assert payload["encoder_options"] == {"freeze": False}
    assert any(k.startswith("transformer.encoder.layer.0.") for k in payload["state_dict"])
    top = _changed(original, _trained(runs["top1"]))
    assert top and all(k.startswith("encoder.layer.2.") for k in top)  # only the top block of 3
    assert torch.load(runs["top1"] / "model.pt", weights_only=True)["encoder_options"] == {"freeze": False,
                                                                                           "unfreeze": 1}
    config = (runs["top1"] / "config.toml").read_text()
    assert "finetune = true" in config and "unfreeze = 1" in config and "encoder_lr = 0.001" in config


def test_encoder_and_head_get_their_own_learning_rates(tiny_bert_dir) -> None:
    from metriclearn.sentence import SentenceEncoder
    from metriclearn.training import Trainer, build_objective

    model = SentenceEncoder(tiny_bert_dir, embedding_dim=8, freeze=False, unfreeze=2)
    trainer = Trainer(model, build_objective(None, 8, 4), lr=3e-3, weight_decay=0.01, encoder_lr=2e-5,
                      device="cpu", verbose=False)
    groups = {(g["lr"], g["weight_decay"]): g["params"] for g in trainer.optimizer.param_groups}
    blocks = {id(p) for p in model.encoder_parameters()}
    assert len(blocks) == sum(p.numel() > 0 for b in model.transformer.encoder.layer[1:] for p in b.parameters())
    assert {id(p) for p in groups[(2e-5, 0.01)] + groups[(2e-5, 0.0)]} == blocks
    assert all(p.dim() == 1 for p in groups[(2e-5, 0.0)])  # biases and LayerNorm weights: no decay
    assert {id(p) for p in groups[(3e-3, 0.01)]} == {id(model.head.weight)}


def test_cls_pooling_and_max_length(tmp_path, texts, tiny_bert_dir) -> None:
    run = tmp_path / "cls"
    result = invoke("train", "--data", texts, "--encoder", f"sentence:{tiny_bert_dir}", "--finetune", "--pooling",
                    "cls", "--max-length", "6", *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    from metriclearn.training import load_run

    model = load_run(run).model
    assert model.pooling == "cls" and model.max_length == 6
    with pytest.warns(UserWarning, match="1 of 1 texts are longer than max_length=6 tokens"):
        ids = model._batch(model.tokenize(["tell me about the dog please"]), torch.device("cpu"))
    with torch.no_grad():  # cls pooling: the first token's state, through the head and the normalisation
        first = model.transformer(**ids).last_hidden_state[:, 0]
        expected = torch.nn.functional.normalize(model.head(first), dim=1)
        torch.testing.assert_close(model(["tell me about the dog please"]), expected)


def test_finetuned_run_serves_embed_evaluate_index_and_second_opinion(tmp_path, texts, tiny_bert_dir) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--data", texts, "--encoder", f"sentence:{tiny_bert_dir}", "--finetune", "--loss",
                  "neighborhood", "--loss", "softmax", *FAST, "--out", run).exit_code == 0
    emb = tmp_path / "e.npy"
    result = invoke("embed", "--model", run, "--data", texts, "--out", emb, "--device", "cpu")
    assert result.exit_code == 0, result.output
    from metriclearn.training import load_run

    loaded = load_run(run)
    lines = texts.read_text().splitlines()
    with torch.no_grad():
        direct = loaded.model([json.loads(line)["text"] for line in lines]).numpy()
    np.testing.assert_allclose(np.load(emb), direct, rtol=1e-5, atol=1e-6)  # the fine-tuned weights, reloaded
    result = invoke("evaluate", "--model", run, "--data", texts, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads((run / "evaluate.json").read_text())["retrieval"]["map_at_r"] <= 1
    result = invoke("index", "build", "--model", run, "--data", texts, "--out", tmp_path / "index")
    assert result.exit_code == 0, result.output  # (report reads a run the same way, through load_run)
    result = invoke("second-opinion", "--model", run, "--cache", texts, "--data", texts, "--out", tmp_path / "so.npy")
    assert result.exit_code == 0, result.output  # the softmax term's head is the classifier
    probs = np.load(tmp_path / "so.npy")
    assert probs.shape == (33, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_killed_finetuning_run_resumes_exactly(tmp_path, texts, tiny_bert_dir, monkeypatch) -> None:
    command = ["train", "--data", texts, "--encoder", f"sentence:{tiny_bert_dir}", "--finetune", "--unfreeze", "2",
               "--checkpoint-every", "1", *FAST]
    restore = kill_train_at(monkeypatch, epoch=1, batch=1)
    assert invoke(*command, "--out", tmp_path / "r").exit_code != 0
    assert not (tmp_path / "r" / "model.pt").exists()
    restore()
    result = invoke(*command, "--out", tmp_path / "r", "--resume")
    assert result.exit_code == 0, result.output
    assert invoke(*command, "--out", tmp_path / "straight").exit_code == 0
    a = torch.load(tmp_path / "r" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_text_input_is_one_line(tmp_path, texts, tiny_bert_dir) -> None:
    encoder = f"sentence:{tiny_bert_dir}"
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "a dog", "label": "a"}\n{"text": "  ", "label": "b"}\n')
    assert_one_line_error(invoke("train", "--data", empty, "--encoder", encoder, "--out", tmp_path / "r1"), 1,
                          "empty.jsonl, line 2: 'text' is empty")
    assert_one_line_error(invoke("train", "--data", texts, "--encoder", encoder, "--max-length", "500",
                                 "--out", tmp_path / "r2"), 1,
                          "max_length=500 is longer than the 128 positions the model")
    assert_one_line_error(invoke("train", "--data", texts, "--encoder", encoder, "--finetune", "--unfreeze", "7",
                                 "--out", tmp_path / "r3"), 1, "unfreeze=7 but the model", "has 3 transformer blocks")
    assert_one_line_error(invoke("train", "--data", texts, "--encoder", "mlp", "--finetune",
                                 "--out", tmp_path / "r4"), 2, "finetune apply to sentence encoders only")
    assert_one_line_error(invoke("train", "--data", texts, "--encoder", encoder, "--unfreeze", "1",
                                 "--out", tmp_path / "r5"), 2, "unfreeze=1 needs finetune = true (--finetune)")
    for name in ("r1", "r2", "r3", "r4", "r5"):
        assert not (tmp_path / name).exists()


def test_a_folder_that_is_not_a_text_encoder_is_one_line(tmp_path, texts) -> None:
    from transformers import ViTConfig, ViTModel

    vision = tmp_path / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4)).save_pretrained(vision)
    result = invoke("train", "--data", texts, "--encoder", f"sentence:{vision}", "--finetune",
                    "--out", tmp_path / "r")
    assert_one_line_error(result, 1, "vit", "is not a text encoder")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["distilbert", "roberta", "mpnet"])
def test_other_encoder_families_fine_tune_their_top_block(tmp_path, tiny_bert_dir, kind) -> None:
    from transformers import (
        AutoTokenizer,
        DistilBertConfig,
        DistilBertModel,
        MPNetConfig,
        MPNetModel,
        RobertaConfig,
        RobertaModel,
    )

    from metriclearn.sentence import SentenceEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir), local_files_only=True)
    if kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=16, n_layers=2, n_heads=2,
                                                 hidden_dim=32, max_position_embeddings=64))
    elif kind == "mpnet":
        model = MPNetModel(MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=66,
                                       pad_token_id=tokenizer.pad_token_id))
    else:
        model = RobertaModel(RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=66,
                                           pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path / kind)
    tokenizer.save_pretrained(tmp_path / kind)
    enc = SentenceEncoder(tmp_path / kind, embedding_dim=4, freeze=False, unfreeze=1).train()
    # RoBERTa and MPNet number positions from padding_idx + 1 (RoBERTa's pad id, 0 here; MPNet's is always 1)
    assert enc.max_length == {"distilbert": 64, "roberta": 66 - 1, "mpnet": 66 - 2}[kind]
    with pytest.warns(UserWarning, match="longer than max_length"):  # the longest text the model can take runs
        assert enc([" ".join(["word"] * 300)]).shape == (1, 4)
    trainable = {n for n, p in enc.transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in f".{n}" for n in trainable)  # the top block of 2 only
    enc(["a short text", "a somewhat longer text than that"]).sum().backward()
    assert all(p.grad is not None for p in enc.encoder_parameters())


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_bert_dir) -> None:
    from metriclearn.sentence import SentenceEncoder

    texts = ["a short text", "a rather longer text about dogs and cats", "music"]
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same head
        enc = SentenceEncoder(tiny_bert_dir, embedding_dim=4, freeze=False, gradient_checkpointing=checkpointing)
        count = []
        enc.transformer.encoder.layer[0].attention.register_forward_hook(lambda *args, seen=count: seen.append(1))
        torch.manual_seed(1)  # the same dropout masks (checkpointing restores the RNG state when it recomputes)
        enc.train()(texts).square().sum().backward()
        grads.append({n: p.grad for n, p in enc.named_parameters() if p.grad is not None})
        calls.append(len(count))
    assert calls == [1, 2]  # the first block's attention ran again in the backward pass
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()) + 1e-12)


def test_bf16_autocast_on_cpu_only_for_a_fine_tuned_transformer_on_a_bf16_cpu(tiny_bert_dir, monkeypatch) -> None:
    from metriclearn.sentence import SentenceEncoder
    from metriclearn.training import Trainer, build_objective
    from metriclearn.training import trainer as trainer_module

    def amp_of(model, amp=True):
        return Trainer(model, build_objective(None, 8, 4), amp=amp, device="cpu", verbose=False).amp_dtype

    tuned = SentenceEncoder(tiny_bert_dir, embedding_dim=8, freeze=False)
    frozen = SentenceEncoder(tiny_bert_dir, embedding_dim=8)
    monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda: True)
    assert amp_of(tuned) == torch.bfloat16 and amp_of(tuned, amp=False) is None
    assert amp_of(frozen) is None and amp_of(torch.nn.Linear(4, 8)) is None
    monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda: False)
    assert amp_of(tuned) is None


def test_fine_tuning_batches_are_bucketed_by_token_count(tiny_bert_dir, texts) -> None:
    from metriclearn.data import load_data
    from metriclearn.sentence import SentenceEncoder
    from metriclearn.training import Trainer, build_objective

    data = load_data(texts)
    for freeze in (False, True):
        model = SentenceEncoder(tiny_bert_dir, embedding_dim=8, freeze=freeze)
        trainer = Trainer(model, build_objective(None, 8, 4), batch_size=8, samples_per_class=2, device="cpu",
                          verbose=False)
        trainer.fit(data, epochs=1)
        lengths = trainer.sampler._lengths
        if freeze:  # a frozen transformer runs once per text: nothing to bucket
            assert lengths is None
        else:
            assert lengths.tolist() == [len(model.tokenizer(t)["input_ids"]) for t in data.X]


def test_linear_schedule_warms_up_then_decays_every_group() -> None:
    from metriclearn.training.optim import build_optimizer, build_scheduler

    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    opt = build_optimizer("adamw", [*body.parameters(), *head.parameters()], 1e-3, 0.01, list(body.parameters()),
                          encoder_lr=2e-5)
    schedule = build_scheduler("linear", opt, total_steps=50)  # warm-up: the first 5 steps
    rates = []
    for _ in range(50):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    rates = np.array(rates)  # (steps, groups)
    np.testing.assert_allclose(rates[:6, 0], [0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(rates / rates[5], np.repeat(rates[:, :1] / rates[5, 0], 4, axis=1))  # same shape
    assert (np.diff(rates[5:, 0]) < 0).all() and rates[-1, 0] == pytest.approx(1e-3 / 45)
