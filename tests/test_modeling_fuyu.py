import pytest
import torch
from model_tester_mixin import ModelTesterMixin

from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM, MosaicFuyuModel

IMAGE, NEWLINE, PAD, BOS, EOS = 10, 11, 0, 1, 2
PATCH_DIM = 4 * 4 * 3


def tiny_fuyu_config(**overrides) -> MosaicFuyuConfig:
    values = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        patch_size=4,
        image_token_id=IMAGE,
        image_newline_token_id=NEWLINE,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    values.update(overrides)
    return MosaicFuyuConfig(**values)


def sample_tokens(rows: int, cols: int, prompt: list[int]) -> list[int]:
    """One image of rows x cols patches (each row ended by a newline), then BOS and the prompt."""
    return ([IMAGE] * cols + [NEWLINE]) * rows + [BOS] + prompt


def left_padded_batch(samples: list[list[int]], patch_counts: list[int]) -> dict:
    """Left-pad token lists; patches per sample zero-padded at the end, with their mask."""
    length, max_patches = max(map(len, samples)), max(max(patch_counts), 1)
    input_ids = torch.full((len(samples), length), PAD)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    image_patches = torch.zeros(len(samples), max_patches, PATCH_DIM)
    image_patches_mask = torch.zeros(len(samples), max_patches, dtype=torch.bool)
    generator = torch.Generator().manual_seed(len(samples))
    for row, (tokens, count) in enumerate(zip(samples, patch_counts)):
        input_ids[row, length - len(tokens) :] = torch.tensor(tokens)
        attention_mask[row, length - len(tokens) :] = 1
        image_patches[row, :count] = torch.randn(count, PATCH_DIM, generator=generator)
        image_patches_mask[row, :count] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_patches": image_patches,
        "image_patches_mask": image_patches_mask,
    }


def varied_batch(batch_size: int) -> dict:
    """Different image grids and prompt lengths per sample, so rows need left padding."""
    grids = [(2, 3), (1, 2), (3, 2), (2, 2)]
    samples, counts = [], []
    for index in range(batch_size):
        rows, cols = grids[index % len(grids)]
        samples.append(sample_tokens(rows, cols, list(range(20, 20 + 3 + index))))
        counts.append(rows * cols)
    return left_padded_batch(samples, counts)


class TestMosaicFuyu(ModelTesterMixin):
    model_classes = (MosaicFuyuForCausalLM, MosaicFuyuModel)
    expected_init_std = {r".*\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight": 0.02, r"lm_head\.weight": 0.02}

    def make_config(self):
        return tiny_fuyu_config()

    def make_init_config(self):
        return tiny_fuyu_config(hidden_size=128, intermediate_size=512)

    def make_inputs(self, config, batch_size):
        return varied_batch(batch_size)

    def check_output_shapes(self, model, inputs, outputs):
        batch, length = inputs["input_ids"].shape
        if isinstance(model, MosaicFuyuForCausalLM):
            assert outputs.logits.shape == (batch, length, model.config.vocab_size)
        else:
            assert outputs.last_hidden_state.shape == (batch, length, model.config.hidden_size)
        assert outputs.past_key_values.get_seq_length() == length

    def compared_outputs(self, outputs, inputs):
        values = outputs.logits if "logits" in outputs else outputs.last_hidden_state
        return {"values": values[inputs["attention_mask"].bool()]}  # real tokens only, padding rows dropped

    def select_sample(self, inputs, index):
        """One sample alone: its padding removed, its patches only."""
        keep = inputs["attention_mask"][index].bool()
        count = int(inputs["image_patches_mask"][index].sum())
        return {
            "input_ids": inputs["input_ids"][index, keep][None],
            "attention_mask": inputs["attention_mask"][index, keep][None],
            "image_patches": inputs["image_patches"][index, :count][None],
            "image_patches_mask": inputs["image_patches_mask"][index, :count][None],
        }

    def test_batch_invariance(self):
        """Left-padded rows match each sample run alone, at every real (unpadded) position."""
        model = self.build(MosaicFuyuForCausalLM, attn_implementation="sdpa")
        inputs = varied_batch(4)
        with torch.no_grad():
            batched = model(**inputs).logits
            for index in range(4):
                alone = model(**self.select_sample(inputs, index)).logits[0]
                keep = inputs["attention_mask"][index].bool()
                torch.testing.assert_close(batched[index, keep], alone, atol=1e-5, rtol=1e-5)

    def loss_of(self, model, inputs):
        outputs = model(**inputs)
        values = outputs.logits if "logits" in outputs else outputs.last_hidden_state
        return values.square().mean()

    def test_kv_cache_decode_equals_full_forward(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(3)
        continuation = torch.randint(20, 60, (3, 4), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            full_ids = torch.cat([inputs["input_ids"], continuation], dim=1)
            full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(continuation)], dim=1)
            full = model(**{**inputs, "input_ids": full_ids, "attention_mask": full_mask}).logits
            step = model(**inputs, use_cache=True)
            cache, mask = step.past_key_values, inputs["attention_mask"]
            decoded = [step.logits]
            for position in range(4):
                mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
                step = model(input_ids=continuation[:, position : position + 1], attention_mask=mask, past_key_values=cache)
                decoded.append(step.logits)
        real = full_mask.bool()
        torch.testing.assert_close(torch.cat(decoded, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
    def test_logits_to_keep_equals_the_full_forward_and_caches_every_position(self, attn_implementation):
        """The last layer runs only the kept positions' queries; logits and the cache must not change."""
        model = self.build(MosaicFuyuForCausalLM, attn_implementation=attn_implementation)
        padded = varied_batch(3)
        alone = self.select_sample(padded, 0)
        del alone["attention_mask"]  # no mask at all: the causal mask is implicit under sdpa
        with torch.no_grad():
            for inputs in (padded, alone):
                full = model(**inputs, use_cache=True)
                for keep in (1, 3):
                    kept = model(**inputs, use_cache=True, logits_to_keep=keep)
                    assert kept.logits.shape[1] == keep
                    torch.testing.assert_close(kept.logits, full.logits[:, -keep:], atol=1e-5, rtol=1e-5)
                    every_layer = model(**inputs, logits_to_keep=keep, output_hidden_states=True)  # nothing pruned
                    torch.testing.assert_close(every_layer.logits, kept.logits, atol=1e-5, rtol=1e-5)
                    assert every_layer.hidden_states[-1].shape[1] == full.logits.shape[1]
                    for full_layer, kept_layer in zip(full.past_key_values.layers, kept.past_key_values.layers):
                        torch.testing.assert_close(kept_layer.keys, full_layer.keys)
                        torch.testing.assert_close(kept_layer.values, full_layer.values)

    def test_greedy_generation_matches_the_uncached_argmax_loop(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=None)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.no_grad():
            for _ in range(6):
                logits = model(**{**inputs, "input_ids": ids, "attention_mask": mask}, use_cache=False).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        assert torch.equal(generated, ids)

    def test_left_padded_generation_equals_each_sample_alone(self):
        model = self.build(MosaicFuyuForCausalLM, attn_implementation="sdpa")
        inputs = varied_batch(3)
        settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=PAD, eos_token_id=None)
        batched = model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1] :]
        for index in range(3):
            alone = self.select_sample(inputs, index)
            assert torch.equal(model.generate(**alone, **settings)[0, alone["input_ids"].shape[1] :], batched[index])

    def test_sampling_and_beam_search(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        length = inputs["input_ids"].shape[1]
        torch.manual_seed(3)
        sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=5, num_return_sequences=2, pad_token_id=PAD)
        assert sampled.shape == (4, length + 4)
        beams = model.generate(
            **inputs, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=PAD, eos_token_id=None
        )
        assert beams.shape == (4, length + 4)
        # the best beam scores at least as high as greedy under the model
        greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD, eos_token_id=None)

        def sequence_log_prob(sequences, row):
            mask = torch.cat([inputs["attention_mask"], torch.ones(sequences.shape[0], 4, dtype=torch.long)], dim=1)
            with torch.no_grad():
                logits = model(**{**inputs, "input_ids": sequences, "attention_mask": mask}, use_cache=False).logits
            log_probs = logits[:, length - 1 : -1].log_softmax(-1).gather(-1, sequences[:, length:, None])[..., 0]
            return log_probs.sum(-1)[row]

        for sample in range(2):
            assert sequence_log_prob(beams[::2], sample) >= sequence_log_prob(greedy, sample) - 1e-4

    def test_loss_covers_labelled_tokens_only(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, -2:] = inputs["input_ids"][:, -2:]
        outputs = model(**inputs, labels=labels)
        logits = outputs.logits[:, :-1].reshape(-1, model.config.vocab_size)
        expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(outputs.loss, expected)

    def test_loss_with_num_items_in_batch_sums_for_gradient_accumulation(self):
        """Two micro-batches with num_items_in_batch = all labelled tokens add up to the full-batch loss."""
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(4)
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[0, -3:], labels[1, -1:], labels[2, -2:], labels[3, -4:] = (inputs["input_ids"][i, -n:] for i, n in ((0, 3), (1, 1), (2, 2), (3, 4)))
        full = model(**inputs, labels=labels).loss
        total_items = torch.tensor(int((labels[:, 1:] != -100).sum()))
        halves = [slice(0, 2), slice(2, 4)]
        accumulated = sum(
            model(**{name: value[half] for name, value in inputs.items()}, labels=labels[half], num_items_in_batch=total_items).loss
            for half in halves
        )
        torch.testing.assert_close(accumulated, full)
        # without num_items_in_batch, averaging the micro-batch means differs here (unequal label counts)
        naive = sum(model(**{n: v[h] for n, v in inputs.items()}, labels=labels[h]).loss for h in halves) / 2
        assert (naive - full).abs() > 1e-4

    def test_text_only_input(self):
        model = self.build(MosaicFuyuForCausalLM)
        with torch.no_grad():
            outputs = model(input_ids=torch.tensor([[BOS, 20, 21, 22]]))
        assert outputs.logits.shape == (1, 4, 64)

    def test_bad_inputs_raise_one_clear_error(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        cases = [
            ({**inputs, "image_patches_mask": inputs["image_patches_mask"] & False}, "one patch per image token"),
            ({**inputs, "image_patches": inputs["image_patches"][..., :-1]}, "patch_size \\* patch_size \\* channels"),
            ({**inputs, "image_patches": inputs["image_patches"][:1]}, "image_patches must have shape"),
            ({"input_ids": torch.full((1, 200), 20)}, "exceeds max_position_embeddings=128"),
            ({"input_ids": None}, "exactly one of input_ids and inputs_embeds"),
        ]
        for bad_inputs, message in cases:
            with pytest.raises(ValueError, match=message):
                model(**bad_inputs)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"partial_rotary_factor": 0.0}, "partial_rotary_factor must lie in"),
        ({"partial_rotary_factor": 0.3}, "whole even number"),
        ({"partial_rotary_factor": 0.25, "hidden_size": 24, "num_attention_heads": 4}, "whole even number"),
        ({"image_token_id": 64}, "image_token_id=64"),
        ({"image_newline_token_id": IMAGE}, "must differ"),
        ({"hidden_act": "nope"}, "hidden_act='nope' is unknown"),
        ({"patch_size": 0}, "patch_size must be a positive"),
    ],
)
def test_bad_config_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_fuyu_config(**overrides)


def test_config_defaults_are_fuyu_8b():
    config = MosaicFuyuConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (4096, 36, 64, 262144)
    assert (config.rope_theta, config.partial_rotary_factor, config.hidden_act, config.patch_dim) == (25000.0, 0.5, "relu2", 2700)
