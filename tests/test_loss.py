"""The chunked LM loss (recipe/models/loss.py) gives the model's own loss and gradients: for every model
family, with LoRA, in bf16, and it falls back to the model's own loss where it does not apply."""

import logging

import pytest
import torch

from recipe.evaluation.metrics import sequence_nll
from recipe.models.loss import ChunkedCausalLMLoss, fast_path_problem, linear_cross_entropy

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 128}
LLAMA_LIKE = SMALL | {"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 2}
FAMILIES = {
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}),
    "llama": ("LlamaConfig", LLAMA_LIKE),
    "qwen2": ("Qwen2Config", LLAMA_LIKE),
    "mistral": ("MistralConfig", LLAMA_LIKE),
    "gemma": ("GemmaConfig", LLAMA_LIKE | {"head_dim": 8}),
    "gpt_neox": ("GPTNeoXConfig", SMALL | {"hidden_size": 32, "intermediate_size": 64}),
    "opt": ("OPTConfig", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "word_embed_proj_dim": 16, "max_position_embeddings": 128}),  # a projection after the decoder
    "phi": ("PhiConfig", SMALL | {"hidden_size": 32, "intermediate_size": 64}),  # an LM head with a bias
    "phi3": ("Phi3Config", LLAMA_LIKE | {"pad_token_id": 0}),
}


def tiny_model(family: str, vocab_size: int, **extra):
    import transformers

    config_class, options = FAMILIES[family] if family in FAMILIES else (family, LLAMA_LIKE)
    config = getattr(transformers, config_class)(vocab_size=vocab_size, **options, **extra)
    for name in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout", "attention_dropout", "hidden_dropout",
                 "embd_pdrop", "summary_first_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def packed_batch(tokenizer):
    """Two rows of packed dialogues (positions restart per dialogue), with unlabelled positions and padding."""
    texts = ["Alex: Hello, how are you?\nBob: Fine, thanks.", "Alex: What is AI?", "Bob: I am a robot.\nAlex: Oh."]
    ids = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]
    rows = [ids[0] + ids[1], ids[2]]
    length = max(map(len, rows)) + 3
    input_ids = torch.tensor([r + [tokenizer.eos_token_id] * (length - len(r)) for r in rows])
    positions = [list(range(len(ids[0]))) + list(range(len(ids[1]))), list(range(len(ids[2])))]
    position_ids = torch.tensor([p + list(range(length - len(p))) for p in positions])
    labels = input_ids.clone()
    labels[0, 0] = labels[0, len(ids[0])] = labels[1, 0] = -100  # each dialogue's first token is never predicted
    labels[1, len(ids[2]):] = -100  # padding
    labels[1, 2:5] = -100  # context turns out of the loss (train_on_speakers)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(expected, actual, tol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = expected, actual
    torch.testing.assert_close(loss_b, loss_a, rtol=tol, atol=tol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=tol, atol=tol, msg=f"gradient of {name}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunked_loss_equals_the_models_own_loss_and_gradients(family, tokenizer):
    model = tiny_model(family, len(tokenizer))
    batch = packed_batch(tokenizer)
    chunked = ChunkedCausalLMLoss(chunk_rows=7)  # several chunks, the last one short
    assert fast_path_problem(model) is None
    for num_items in (None, torch.tensor(40)):  # a mean, or a sum over an accumulated batch
        extra = {} if num_items is None else {"num_items_in_batch": num_items}
        expected = loss_and_grads(model, lambda: model(**batch, **extra, use_cache=False).loss)
        actual = loss_and_grads(model, lambda: chunked.forward_for(model)(**batch, **extra).loss)
        assert chunked.active, chunked.problem
        assert_same(expected, actual)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        sums = chunked(model, batch).sequence_sums
    torch.testing.assert_close(sums, sequence_nll(logits, batch["labels"]), rtol=1e-5, atol=1e-4)


def test_lora_model_gets_the_same_adapter_gradients(tokenizer):
    from recipe.config import LoraArguments
    from recipe.models.lora import apply_lora

    model = apply_lora(tiny_model("gpt2", len(tokenizer)), LoraArguments(use_lora=True, lora_r=4, lora_dropout=0.0))
    with torch.no_grad():  # adapters start at zero; move them so that every gradient path is exercised
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    batch = packed_batch(tokenizer)
    chunked = ChunkedCausalLMLoss(chunk_rows=5)
    expected = loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
    actual = loss_and_grads(model, lambda: chunked.forward_for(model)(**batch).loss)
    assert chunked.active and expected[1]
    assert all("lora_" in name for name in actual[1])  # the frozen head weight gets no gradient
    assert_same(expected, actual)


def test_bf16_autocast_matches_the_models_own_bf16_loss(tokenizer):
    model = tiny_model("gpt2", len(tokenizer))
    batch = packed_batch(tokenizer)
    chunked = ChunkedCausalLMLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
        actual = loss_and_grads(model, lambda: chunked.forward_for(model)(**batch).loss)
    assert_same(expected, actual, tol=2e-2)


def test_linear_cross_entropy_with_bias_and_no_labels():
    torch.manual_seed(0)
    hidden = torch.randn(10, 6, requires_grad=True)
    weight = torch.randn(9, 6, requires_grad=True)
    bias = torch.randn(9, requires_grad=True)
    targets = torch.randint(0, 9, (10,))
    total, nll = linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=3)
    total.backward()
    chunked_grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    plain.sum().backward()
    torch.testing.assert_close(nll, plain.detach())
    for chunked_grad, t in zip(chunked_grads, (hidden, weight, bias)):
        torch.testing.assert_close(chunked_grad, t.grad)
    empty_total, empty_nll = linear_cross_entropy(hidden[:0], weight, bias, targets[:0])
    assert empty_total.item() == 0 and empty_nll.numel() == 0


def test_models_whose_logits_are_transformed_fall_back_to_their_own_loss(tokenizer, caplog):
    softcapped = tiny_model("Gemma2Config", len(tokenizer), head_dim=8, final_logit_softcapping=30.0)
    assert "final_logit_softcapping" in fast_path_problem(softcapped)

    class ScaledLogits(type(tiny_model("gpt2", 8))):
        """Logits scaled after the head, with nothing in the config to say so."""

        def forward(self, *args, logits_to_keep=0, **kwargs):
            output = super().forward(*args, logits_to_keep=logits_to_keep, **kwargs)
            output.logits = output.logits * 0.5
            return output

    model = tiny_model("gpt2", len(tokenizer))
    scaled = ScaledLogits(model.config).eval()
    scaled.load_state_dict(model.state_dict())
    batch = packed_batch(tokenizer)
    chunked = ChunkedCausalLMLoss()
    with caplog.at_level(logging.WARNING, logger="recipe.models.loss"):
        loss = chunked.forward_for(scaled)(**batch, use_cache=False).loss
    assert not chunked.active and "logits differ" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(loss, scaled(**batch, use_cache=False).loss)
    assert chunked.forward_for(scaled) is scaled  # the model's own path from then on


def trainer_for(tmp_path, tokenizer, data_args, **options):
    from conftest import OFFLINE_MODEL
    from recipe.config import DialogueTrainingArguments, ModelArguments
    from recipe.data import build_datasets
    from recipe.models.loading import get_model
    from recipe.training.trainer import build_trainer

    data = data_args(max_dialogues=60)
    prepared = build_datasets(data, tokenizer)
    torch.manual_seed(0)
    model = get_model(ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True), tokenizer)
    args = DialogueTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2, learning_rate=3e-3,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, report_to="none", logging_steps=1,
        disable_tqdm=True, seed=0, **options,
    )
    return build_trainer(model, tokenizer, prepared, data, args)


def test_trainer_trains_and_evaluates_alike_with_either_loss(tmp_path, tokenizer, data_args):
    results = {}
    for chunked in (True, False):
        trainer = trainer_for(tmp_path, tokenizer, data_args, bf16=False, chunked_lm_loss=chunked)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        results[chunked] = (losses, trainer.evaluate())
        assert (trainer.lm_loss is not None and trainer.lm_loss.active) is chunked
    (chunked_losses, chunked_eval), (own_losses, own_eval) = results[True], results[False]
    assert len(chunked_losses) == 4
    assert chunked_losses == pytest.approx(own_losses, rel=1e-5)
    for key in ("eval_token_loss", "eval_num_tokens", "eval_loss"):
        assert chunked_eval[key] == pytest.approx(own_eval[key], rel=1e-5), key


def test_chunked_loss_runs_in_the_trainers_mixed_precision(tmp_path, tokenizer, data_args):
    """The Trainer autocasts only the model's forward: the loss must run under the same autocast, or its
    head would silently compute in float32 (and the logit check would fail)."""
    trainer = trainer_for(tmp_path, tokenizer, data_args, bf16=True, use_cpu=True)
    trainer.train()
    assert trainer.lm_loss.active, trainer.lm_loss.problem


@pytest.mark.parametrize("family", ["gpt2", "Gemma2Config"])  # the chunked path, and the fallback (soft-capping)
def test_label_nll_for_evaluation_equals_the_logits_cross_entropy(family, tokenizer):
    from recipe.models.loss import label_nll

    model = tiny_model(family, len(tokenizer), **({"head_dim": 8} if family != "gpt2" else {}))
    batch = packed_batch(tokenizer)
    attention_mask = torch.ones_like(batch["input_ids"])
    attention_mask[1, -3:] = 0  # the padding of the second row
    nll = label_nll(model, batch["input_ids"], attention_mask, batch["labels"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=attention_mask).logits
    shift = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shift.clamp(min=0), reduction="none")
    torch.testing.assert_close(nll, expected * (shift != -100), rtol=1e-5, atol=1e-5)


def test_label_smoothing_keeps_the_models_own_loss(tmp_path, tokenizer, data_args):
    """The Trainer's label smoother needs the logits: the chunked loss stands aside."""
    trainer = trainer_for(tmp_path, tokenizer, data_args, bf16=False, label_smoothing_factor=0.1)
    assert trainer.lm_loss is None
    trainer.train()
    assert trainer.evaluate()["eval_token_loss"] > 0
