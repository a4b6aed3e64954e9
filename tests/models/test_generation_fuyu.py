"""generate() on MosaicFuyuForCausalLM: what transformers' GenerationTesterMixin checks (the sdist does not ship
it), written for image inputs. Greedy against an uncached argmax loop, beam search and sampling, left padding
against each sample alone, reuse of a cache, inputs_embeds, and the max_new_tokens edge cases."""

import copy

import pytest
import torch
from tiny import BOS, EOS, PAD, tiny_fuyu_config, varied_batch
from transformers import DynamicCache

from mosaic_vlm.modeling import MosaicFuyuForCausalLM

GREEDY = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)


def build(attn_implementation="eager", **overrides) -> MosaicFuyuForCausalLM:
    torch.manual_seed(0)
    config = tiny_fuyu_config(**overrides)
    return MosaicFuyuForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def extended(inputs: dict, new_tokens: torch.Tensor) -> dict:
    """`inputs` with `new_tokens` (batch, n) appended, attended."""
    return {
        **inputs,
        "input_ids": torch.cat([inputs["input_ids"], new_tokens], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(new_tokens)], dim=1),
    }


def sequence_log_probs(model, inputs: dict, sequences: torch.Tensor) -> torch.Tensor:
    """Sum of the model's log-probabilities of each sequence's generated tokens (batch,)."""
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**extended(inputs, sequences[:, prompt_length:]), use_cache=False).logits
    log_probs = logits[:, prompt_length - 1 : -1].log_softmax(-1)
    return log_probs.gather(-1, sequences[:, prompt_length:, None])[..., 0].sum(-1)


def test_greedy_equals_the_uncached_argmax_loop():
    model = build()
    inputs = varied_batch(2)
    generated = model.generate(**inputs, max_new_tokens=6, **GREEDY)
    expected = inputs
    with torch.no_grad():
        for _ in range(6):
            logits = model(**expected, use_cache=False).logits
            expected = extended(expected, logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(generated, expected["input_ids"])


def test_greedy_dict_output_scores_and_layer_outputs():
    model = build()
    inputs = varied_batch(2)
    length = inputs["input_ids"].shape[1]
    out = model.generate(
        **inputs,
        max_new_tokens=3,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        output_hidden_states=True,
        output_attentions=True,
        **GREEDY,
    )
    assert out.sequences.shape == (2, length + 3)
    assert len(out.scores) == len(out.logits) == 3 and out.scores[0].shape == (2, 64)
    assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences[:, length:])
    # per step a tuple over layers (+ the embeddings for hidden states): prefill sees the prompt, then one token
    assert len(out.hidden_states) == len(out.attentions) == 3
    assert len(out.hidden_states[0]) == 3 and out.hidden_states[0][0].shape == (2, length, 32)
    assert out.hidden_states[1][0].shape == (2, 1, 32)
    assert len(out.attentions[0]) == 2 and out.attentions[0][0].shape == (2, 4, length, length)
    assert out.attentions[2][0].shape == (2, 4, 1, length + 2)


def test_beam_search_scores_at_least_greedy_and_returns_several_sequences():
    model = build()
    inputs = varied_batch(2)
    length = inputs["input_ids"].shape[1]
    beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, num_return_sequences=2, **GREEDY)
    assert beams.shape == (4, length + 4)
    greedy = model.generate(**inputs, max_new_tokens=4, **GREEDY)
    best_beams = beams[::2]  # the first returned sequence of each sample is its best beam
    assert (sequence_log_probs(model, inputs, best_beams) >= sequence_log_probs(model, inputs, greedy) - 1e-4).all()


def test_sampling_is_seeded_and_follows_top_k():
    model = build()
    inputs = varied_batch(2)
    settings = dict(
        max_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=2, pad_token_id=PAD, eos_token_id=None
    )
    # top_k=1 leaves one candidate per step: sampling is greedy
    sampled = model.generate(**inputs, **settings)
    greedy = model.generate(**inputs, max_new_tokens=5, **GREEDY)
    assert torch.equal(sampled, greedy.repeat_interleave(2, dim=0))
    settings.update(top_k=20, temperature=2.0)
    torch.manual_seed(3)
    first = model.generate(**inputs, **settings)
    torch.manual_seed(3)
    assert torch.equal(first, model.generate(**inputs, **settings))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_left_padded_batch_equals_each_sample_alone(attn_implementation):
    model = build(attn_implementation)
    inputs = varied_batch(3)
    batched = model.generate(**inputs, max_new_tokens=5, **GREEDY)[:, inputs["input_ids"].shape[1] :]
    for index in range(3):
        keep = inputs["attention_mask"][index].bool()
        count = int(inputs["image_patches_mask"][index].sum())
        alone = {
            "input_ids": inputs["input_ids"][index, keep][None],
            "attention_mask": inputs["attention_mask"][index, keep][None],
            "pixel_values": inputs["pixel_values"][index, :count][None],
        }
        generated = model.generate(**alone, max_new_tokens=5, **GREEDY)[0, alone["input_ids"].shape[1] :]
        assert torch.equal(generated, batched[index])


def test_generation_continues_from_a_reused_cache():
    """A cache filled by one forward over the prompt continues as if generate() had run the prompt itself."""
    model = build()
    inputs = varied_batch(2)
    full = model.generate(**inputs, max_new_tokens=5, **GREEDY)
    with torch.no_grad():
        cache = model(**inputs, past_key_values=DynamicCache(config=model.config), use_cache=True).past_key_values
    first_token = full[:, inputs["input_ids"].shape[1] : inputs["input_ids"].shape[1] + 1]
    continued = model.generate(**extended(inputs, first_token), past_key_values=cache, max_new_tokens=4, **GREEDY)
    assert torch.equal(continued, full)
    # a prompt prefix cached once serves two different continuations
    with torch.no_grad():
        prefix_cache = model(**inputs, use_cache=True).past_key_values
    for suffix in ([[20, 21], [22, 23]], [[30, 31], [32, 33]]):
        prompt = extended(inputs, torch.tensor(suffix))
        expected = model.generate(**prompt, max_new_tokens=3, **GREEDY)
        reused = model.generate(**prompt, past_key_values=copy.deepcopy(prefix_cache), max_new_tokens=3, **GREEDY)
        assert torch.equal(reused, expected)


def test_generate_from_inputs_embeds_with_image_patches():
    """As transformers' Fuyu: the image tokens are found by their embedding; only new tokens are returned."""
    model = build()
    inputs = varied_batch(2)
    from_ids = model.generate(**inputs, max_new_tokens=4, **GREEDY)[:, inputs["input_ids"].shape[1] :]
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = model.generate(
        inputs_embeds=embeds,
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        image_patches_mask=inputs["image_patches_mask"],
        max_new_tokens=4,
        **GREEDY,
    )
    assert torch.equal(from_embeds, from_ids)


def test_deprecated_image_patches_generate_the_same():
    model = build()
    inputs = varied_batch(2)
    expected = model.generate(**inputs, max_new_tokens=3, **GREEDY)
    old_style = {**inputs, "image_patches": inputs["pixel_values"]}
    del old_style["pixel_values"]
    with pytest.warns(FutureWarning, match="`image_patches` is deprecated"):
        generated = model.generate(**old_style, max_new_tokens=3, **GREEDY)
    assert torch.equal(generated, expected)


def test_max_new_tokens_edge_cases():
    model = build()
    inputs = varied_batch(2)
    length = inputs["input_ids"].shape[1]
    assert model.generate(**inputs, max_new_tokens=1, **GREEDY).shape == (2, length + 1)
    with pytest.raises(ValueError, match="max_length"):  # a max_length the prompt already fills
        model.generate(**inputs, max_length=length, **GREEDY)
    # min_new_tokens holds EOS back; without it EOS ends generation
    eos_first = model.generate(
        **inputs,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
        suppress_tokens=list(range(3, 64)),
    )
    assert eos_first.shape == (2, length + 4) and (eos_first[:, length:] != EOS).all()
    stopped = model.generate(
        **inputs,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
        suppress_tokens=[PAD, BOS, *range(3, 64)],
    )  # EOS is all that is left
    assert stopped.shape == (2, length + 1) and (stopped[:, length] == EOS).all()
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(**inputs, max_new_tokens=0, **GREEDY)
