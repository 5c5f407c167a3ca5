"""``convert-official``: tiny checkpoints written in the released LongLLaVA naming -> SDK format.

The fake checkpoints follow the official layout exactly: LLaVA wrapper keys
(``model.mm_projector.{0,2}``, ``model.vision_tower.vision_tower.vision_model.*``) around AI21's
remote-code Jamba (``moe.experts.{j}``, ``moe.router``, ``pre_moe_layernorm``,
``mamba.B_layernorm``...), with ``moe.experts.0`` in every layer that has a single expert,
an official-style ``config.json`` (``model_type: llava_jamba``, no ``resamplePooling``, as the
official code saves it) and a locally built Jamba-like tokenizer.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast

from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration, LongLLaVAProcessor, Pipeline
from longllava_sdk.convert_official import REPORT_FILE, build_sdk_config, convert_official
from longllava_sdk.errors import CheckpointError, UnsafeCheckpointError
from trainer_fixtures import assert_auto_files

pytestmark = pytest.mark.compat  # also run on the oldest allowed dependency versions (.ci/run)

TINY = LongLLaVAConfig.from_preset("tiny")
TEXT, VISION = TINY.text_config, TINY.vision_config
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."
VISION_POSITIONS = (VISION.image_size // VISION.patch_size) ** 2 + 1

# Official per-layer names -> SDK names (spelled out here, independently of the converter).
LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_moe_layernorm.weight": "pre_ff_layernorm.weight",
    "self_attn.q_proj.weight": "self_attn.q_proj.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "mamba.in_proj.weight": "mamba.in_proj.weight",
    "mamba.conv1d.weight": "mamba.conv1d.weight",
    "mamba.conv1d.bias": "mamba.conv1d.bias",
    "mamba.x_proj.weight": "mamba.x_proj.weight",
    "mamba.dt_proj.weight": "mamba.dt_proj.weight",
    "mamba.dt_proj.bias": "mamba.dt_proj.bias",
    "mamba.A_log": "mamba.A_log",
    "mamba.D": "mamba.D",
    "mamba.out_proj.weight": "mamba.out_proj.weight",
    "mamba.dt_layernorm.weight": "mamba.dt_layernorm.weight",
    "mamba.B_layernorm.weight": "mamba.b_layernorm.weight",
    "mamba.C_layernorm.weight": "mamba.c_layernorm.weight",
}
TOP_LEVEL = {
    "model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
    "model.final_layernorm.weight": "language_model.model.final_layernorm.weight",
    "lm_head.weight": "language_model.lm_head.weight",
    "model.mm_projector.0.weight": "projector.linear_1.weight",
    "model.mm_projector.0.bias": "projector.linear_1.bias",
    "model.mm_projector.2.weight": "projector.linear_2.weight",
    "model.mm_projector.2.bias": "projector.linear_2.bias",
}


# --------------------------------------------------------------------------------------------
# Writing fake official checkpoints
# --------------------------------------------------------------------------------------------
@functools.cache
def jamba_like_tokenizer() -> PreTrainedTokenizerFast:
    """A small SentencePiece-style BPE like Jamba's: "▁" for spaces, byte fallback, and no
    dummy prefix (Jamba's tokenizer.model has ``add_dummy_prefix: false``)."""
    tok = Tokenizer(models.BPE(unk_token="<|unk|>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=TEXT.vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(["Hello world. What is shown in the image? Is there a nodule? The answer is yes."] * 8,
                            trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|unk|>")


def official_config(num_experts: int, **extra) -> dict:
    cfg = {
        "architectures": ["LlavaJambaForCausalLM"], "model_type": "llava_jamba",
        "auto_map": {"AutoConfig": "configuration_jamba.JambaConfig"},
        "vocab_size": TEXT.vocab_size, "hidden_size": TEXT.hidden_size, "intermediate_size": TEXT.intermediate_size,
        "num_hidden_layers": TEXT.num_hidden_layers, "num_attention_heads": TEXT.num_attention_heads,
        "num_key_value_heads": TEXT.num_key_value_heads, "attn_layer_period": 8, "attn_layer_offset": 4,
        "expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": num_experts,
        "num_experts_per_tok": 2 if num_experts > 1 else 1, "mamba_d_state": TEXT.mamba_d_state,
        "mamba_d_conv": TEXT.mamba_d_conv, "mamba_expand": TEXT.mamba_expand, "mamba_dt_rank": TEXT.mamba_dt_rank,
        "mamba_conv_bias": True, "mamba_proj_bias": False, "mamba_inner_layernorms": True, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "n_ctx": 65536, "tie_word_embeddings": False, "sliding_window": None,
        "use_mamba_kernels": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32", "transformers_version": "4.40.0.dev0",
        # LLaVA settings as the official training script stores them (no resamplePooling).
        "mm_vision_tower": "clip_tiny", "mm_hidden_size": VISION.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "use_mm_proj": True, "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False,
    }
    cfg.update(extra)
    return cfg


def experts_in_layer(layer: int, num_experts: int) -> int:
    return num_experts if layer % 2 == 1 else 1


def official_state_dict(num_experts: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official key names and shapes."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    def norm(n):
        return 1.0 + rand(n)

    H, I, V = TEXT.hidden_size, TEXT.intermediate_size, TEXT.vocab_size
    d_in, n_state, rank = TEXT.mamba_expand * H, TEXT.mamba_d_state, TEXT.mamba_dt_rank
    head_dim = H // TEXT.num_attention_heads
    sd = {
        "model.embed_tokens.weight": rand(V, H), "model.final_layernorm.weight": norm(H), "lm_head.weight": rand(V, H),
        "model.mm_projector.0.weight": rand(H, VISION.hidden_size), "model.mm_projector.0.bias": rand(H),
        "model.mm_projector.2.weight": rand(H, H), "model.mm_projector.2.bias": rand(H),
    }
    torch.manual_seed(seed)
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION.to_dict()))
    for key, value in clip.state_dict().items():  # transformers 4 had a `vision_model.` level here
        sd[CLIP_PREFIX + key] = value + rand(*value.shape, scale=0.01)
    sd[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(VISION_POSITIONS).unsqueeze(0)
    for i in range(TEXT.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "pre_moe_layernorm.weight"] = norm(H)
        if i % 8 == 4:
            kv = TEXT.num_key_value_heads * head_dim
            sd.update({p + "self_attn.q_proj.weight": rand(H, H), p + "self_attn.k_proj.weight": rand(kv, H),
                       p + "self_attn.v_proj.weight": rand(kv, H), p + "self_attn.o_proj.weight": rand(H, H)})
        else:
            sd.update({
                p + "mamba.in_proj.weight": rand(2 * d_in, H), p + "mamba.conv1d.weight": rand(d_in, 1, 4),
                p + "mamba.conv1d.bias": rand(d_in), p + "mamba.x_proj.weight": rand(rank + 2 * n_state, d_in),
                p + "mamba.dt_proj.weight": rand(d_in, rank), p + "mamba.dt_proj.bias": rand(d_in) - 2.0,
                p + "mamba.A_log": torch.log(torch.arange(1, n_state + 1.0)).repeat(d_in, 1) + rand(d_in, n_state),
                p + "mamba.D": norm(d_in), p + "mamba.out_proj.weight": rand(H, d_in),
                p + "mamba.dt_layernorm.weight": norm(rank), p + "mamba.B_layernorm.weight": norm(n_state),
                p + "mamba.C_layernorm.weight": norm(n_state),
            })
        n_exp = experts_in_layer(i, num_experts)
        if n_exp > 1:
            sd[p + "moe.router.weight"] = rand(n_exp, H, scale=1.0)
        for j in range(n_exp):
            sd[p + f"moe.experts.{j}.gate_proj.weight"] = rand(I, H)
            sd[p + f"moe.experts.{j}.up_proj.weight"] = rand(I, H)
            sd[p + f"moe.experts.{j}.down_proj.weight"] = rand(H, I)
    return sd



def write_official(directory: Path, state: dict[str, torch.Tensor], config: dict, shards: int = 2,
                   pickle: bool = False) -> Path:
    """Write an official-style checkpoint directory (sharded safetensors + index, or a pickle)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    jamba_like_tokenizer().save_pretrained(directory)
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "LlamaTokenizer"  # as the released Jamba tokenizer_config says
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    CLIPVisionConfig(**VISION.to_dict()).save_pretrained(directory / "clip_tiny")
    if pickle:
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    keys = list(state)
    names = [f"model-{s + 1:05d}-of-{shards:05d}.safetensors" for s in range(shards)]
    # Round-robin: a layer's gate/up/down projections land in different shards.
    weight_map = {k: names[i % shards] for i, k in enumerate(keys)}
    for name in names:
        save_file({k: state[k].contiguous() for k in keys if weight_map[k] == name}, str(directory / name),
                  metadata={"format": "pt"})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def load_converted(path: Path) -> LongLLaVAForConditionalGeneration:
    model, info = LongLLaVAForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def moe_case(tmp_path_factory):
    """The MoE variant (4 experts on odd layers, ``moe.experts.0`` elsewhere), converted."""
    root = tmp_path_factory.mktemp("moe")
    state = official_state_dict(num_experts=4)
    src = write_official(root / "official", state, official_config(num_experts=4))
    dst = Path(convert_official(str(src), str(root / "converted")))
    return state, src, dst, load_converted(dst)


@pytest.fixture(scope="module")
def dense_case(tmp_path_factory):
    """The 9B-like variant: one expert everywhere, plus a (1, H) router the converter must drop."""
    root = tmp_path_factory.mktemp("dense")
    state = official_state_dict(num_experts=1, seed=1)
    state["model.layers.3.moe.router.weight"] = torch.randn(1, TEXT.hidden_size)
    src = write_official(root / "official", state, official_config(num_experts=1))
    dst = Path(convert_official(str(src), str(root / "converted")))
    return state, src, dst, load_converted(dst)


def expected_target(key: str, num_experts: int) -> tuple[str, tuple] | None:
    """(SDK key, index into it) a source key must land at; ``None`` for dropped keys."""
    if key in TOP_LEVEL:
        return TOP_LEVEL[key], ()
    if key.startswith(CLIP_PREFIX):
        rest = key[len(CLIP_PREFIX):]
        return (None if rest == "embeddings.position_ids" else ("vision_tower." + rest, ()))
    _, _, layer, rest = key.split(".", 3)
    prefix = f"language_model.model.layers.{layer}."
    if rest in LAYER_RENAMES:
        return prefix + LAYER_RENAMES[rest], ()
    n_exp = experts_in_layer(int(layer), num_experts)
    if rest == "moe.router.weight":
        return (prefix + "feed_forward.router.weight", ()) if n_exp > 1 else None
    _, _, j, proj, _ = rest.split(".")
    if n_exp == 1:
        return prefix + f"feed_forward.{proj}.weight", ()
    inter = TEXT.intermediate_size
    if proj == "gate_proj":
        return prefix + "feed_forward.experts.gate_up_proj", (int(j), slice(0, inter))
    if proj == "up_proj":
        return prefix + "feed_forward.experts.gate_up_proj", (int(j), slice(inter, 2 * inter))
    return prefix + "feed_forward.experts.down_proj", (int(j),)


def assert_every_weight_from_source(state, model, num_experts) -> int:
    params = model.state_dict()
    covered: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in params.items()}
    dropped = 0
    for key, value in state.items():
        target = expected_target(key, num_experts)
        if target is None:
            dropped += 1
            continue
        name, index = target
        assert torch.equal(params[name][index], value.to(params[name].dtype)), key
        covered[name][index] = True
    uncovered = [k for k, mask in covered.items() if not bool(mask.all())]
    assert not uncovered, f"SDK weights not filled from a source tensor: {uncovered}"
    return dropped


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
def test_moe_checkpoint_every_weight_equals_its_source(moe_case):
    state, _, dst, model = moe_case
    assert assert_every_weight_from_source(state, model, num_experts=4) == 1  # CLIP position_ids
    cfg = model.config
    assert cfg.text_config.num_experts == 4 and cfg.text_config.mamba_dt_rank == TEXT.mamba_dt_rank
    assert cfg.pooling == "2d" and cfg.tokens_per_image == 144 and cfg.vision_feature_layer == -2
    assert cfg.text_config.tie_word_embeddings is False
    assert not torch.equal(model.language_model.lm_head.weight, model.language_model.model.embed_tokens.weight)
    report = json.loads((dst / REPORT_FILE).read_text())
    assert "does not save it" in report["pooling_source"]
    assert [d["key"] for d in report["dropped"]] == [CLIP_PREFIX + "embeddings.position_ids"]


def _official_expert(state, layer, j, x):
    p = f"model.layers.{layer}.moe.experts.{j}."
    gate = x @ state[p + "gate_proj.weight"].T
    up = x @ state[p + "up_proj.weight"].T
    return (F.silu(gate) * up) @ state[p + "down_proj.weight"].T


def test_fused_experts_compute_what_the_official_experts_compute(moe_case):
    state, _, _, model = moe_case
    torch.manual_seed(0)
    x = torch.randn(7, TEXT.hidden_size)
    block = model.language_model.model.layers[1].feed_forward
    with torch.no_grad():
        for j in range(4):  # each expert alone: route every token to expert j with weight 1
            index = torch.full((7, 1), j)
            got = block.experts(x, index, torch.ones(7, 1))
            torch.testing.assert_close(got, _official_expert(state, 1, j, x), rtol=1e-5, atol=1e-6)
        # The whole block, routed as AI21's code does: softmax over router logits, top-2, no renormalisation.
        probs = torch.softmax(x @ state["model.layers.1.moe.router.weight"].T, dim=-1)
        weights, chosen = torch.topk(probs, 2, dim=-1)
        reference = torch.zeros_like(x)
        for t in range(7):
            for k in range(2):
                reference[t] += weights[t, k] * _official_expert(state, 1, int(chosen[t, k]), x[t:t + 1])[0]
        torch.testing.assert_close(block(x[None])[0], reference, rtol=1e-5, atol=1e-6)


def test_single_expert_layers_become_the_dense_mlp(moe_case, dense_case):
    for state, _, _, model in (moe_case, dense_case):
        x = torch.randn(5, TEXT.hidden_size)
        mlp = model.language_model.model.layers[0].feed_forward
        assert type(mlp).__name__ == "JambaMLP"
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), _official_expert(state, 0, 0, x), rtol=1e-5, atol=1e-6)


def test_dense_checkpoint_every_weight_equals_its_source_and_router_drop_is_reported(dense_case):
    state, _, dst, model = dense_case
    # dropped: CLIP position_ids and the router of a 1-expert layer
    assert assert_every_weight_from_source(state, model, num_experts=1) == 2
    assert all(type(layer.feed_forward).__name__ == "JambaMLP" for layer in model.language_model.model.layers)
    report = json.loads((dst / REPORT_FILE).read_text())
    rules = {d["key"]: d["rule"] for d in report["dropped"]}
    assert "single logit" in rules["model.layers.3.moe.router.weight"]


def to_native_jamba_names(key: str) -> str:
    """The transformers-4 native Jamba spelling of an official (AI21 remote-code) key."""
    layer = key.split(".")[2] if key.startswith("model.layers.") else None
    if layer is not None and experts_in_layer(int(layer), 4) == 1:
        key = key.replace("moe.experts.0.", "feed_forward.")
    for old, new in [("moe.", "feed_forward."), ("pre_moe_layernorm", "pre_ff_layernorm"),
                     ("B_layernorm", "b_layernorm"), ("C_layernorm", "c_layernorm")]:
        key = key.replace(old, new)
    return key


def test_transformers4_native_jamba_names_are_accepted(tmp_path):
    state = official_state_dict(num_experts=4, seed=4)
    native = {to_native_jamba_names(k): v for k, v in state.items()}
    assert "model.layers.0.feed_forward.gate_proj.weight" in native
    src = write_official(tmp_path / "native", native, official_config(num_experts=4), shards=1)
    dst = Path(convert_official(str(src), str(tmp_path / "out")))
    assert_every_weight_from_source(state, load_converted(dst), num_experts=4)


def test_converted_model_runs_and_round_trips(moe_case, tmp_path, rgb_images):
    _, _, dst, model = moe_case
    processor = LongLLaVAProcessor.from_pretrained(dst)
    assert_auto_files(dst)  # transformers' Auto classes load it (tests/test_hf_auto.py)
    assert processor.tokens_per_image == 144 and processor.pad_to_square
    assert processor.image_processor.crop_size["height"] == 336
    batch = processor(messages=[{"role": "user", "content": "What is shown in the image?",
                                 "media": [rgb_images[0]]}])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == TEXT.vocab_size and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "resaved")
    reloaded = load_converted(tmp_path / "resaved")
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # every weight round-trips bit-exactly
    with torch.no_grad():
        again = reloaded(**batch).logits
    # Bit-identical weights, but the forward need not be: under transformers 5.19 the reloaded
    # model's logits differ by ~7e-6 (the same values summed in another order).
    torch.testing.assert_close(again, logits, rtol=1e-5, atol=1e-4)
    answer = Pipeline.from_pretrained(dst, device="cpu")("Describe.", images=[rgb_images[1]], max_new_tokens=3)
    assert isinstance(answer, str)


def test_tokenizer_is_carried_over_exactly(moe_case):
    """transformers 5's LlamaTokenizer (named by the official tokenizer_config) would add a
    "▁" prefix that Jamba's tokenizer does not; the converted tokenizer must not."""
    _, src, dst, _ = moe_case
    source = Tokenizer.from_file(str(src / "tokenizer.json"))
    converted = LongLLaVAProcessor.from_pretrained(dst).tokenizer
    for text in ["Hello world", " What is shown in the image?\n", "<|startoftext|><|User|>\nIs there a nodule?"]:
        expected = source.encode(text, add_special_tokens=False).ids
        assert converted(text, add_special_tokens=False)["input_ids"] == expected
    assert (converted.bos_token, converted.eos_token, converted.pad_token) == ("<|startoftext|>", "<|endoftext|>",
                                                                                "<|pad|>")


@pytest.mark.parametrize("mutate, expected", [
    (lambda sd: sd.update({"model.layers.2.moe.mystery.weight": torch.zeros(3)}), "model.layers.2.moe.mystery"),
    (lambda sd: sd.update({"model.image_newline": torch.zeros(TEXT.hidden_size)}), "model.image_newline"),
    (lambda sd: sd.update({"model.layers.0.moe.experts.1.up_proj.weight": torch.zeros(1)}), "experts.1.up_proj"),
    (lambda sd: sd.pop("model.layers.3.moe.experts.2.down_proj.weight"), "experts.2.down_proj"),
    (lambda sd: sd.update({"lm_head.weight": torch.zeros(TEXT.vocab_size + 1, TEXT.hidden_size)}), "lm_head"),
    (lambda sd: sd.update({"model.layers.2.moe.router.weight": torch.zeros(4, TEXT.hidden_size)}),
     "model.layers.2.moe.router"),
])
def test_unmapped_missing_or_misshapen_weights_are_errors_naming_them(tmp_path, mutate, expected):
    state = official_state_dict(num_experts=4)
    mutate(state)
    src = write_official(tmp_path / "official", state, official_config(num_experts=4), shards=1)
    with pytest.raises(CheckpointError, match="nothing was written") as err:
        convert_official(str(src), str(tmp_path / "out"))
    assert expected in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, expected", [
    ({"mamba_inner_layernorms": False}, "mamba_inner_layernorms"),
    ({"model_type": "jamba"}, "llava_jamba"),
    ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type"),
    ({"mm_projector_type": "linear"}, "mm_projector_type"),
    ({"mm_hidden_size": 1024}, "mm_hidden_size"),
])
def test_unsupported_official_settings_are_refused(tmp_path, override, expected):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps(official_config(4, **override)))
    CLIPVisionConfig(**VISION.to_dict()).save_pretrained(tmp_path / "src" / "clip_tiny")
    with pytest.raises(CheckpointError, match=expected):
        convert_official(str(tmp_path / "src"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_pickle_weights_need_allow_pickle(tmp_path):
    state = official_state_dict(num_experts=1, seed=2)
    src = write_official(tmp_path / "official", state, official_config(num_experts=1), pickle=True)
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        convert_official(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    dst = convert_official(str(src), str(tmp_path / "out"), allow_pickle=True)
    assert_every_weight_from_source(state, load_converted(Path(dst)), num_experts=1)
    assert json.loads((Path(dst) / REPORT_FILE).read_text())["source_weights"].startswith("pickle")


def test_cli_entry_point_with_dtype_and_small_shards(moe_case, tmp_path):
    from longllava_sdk.cli import main

    _, src, _, _ = moe_case
    dst = tmp_path / "cli"
    assert main(["convert-official", str(src), str(dst), "--dtype", "bfloat16", "--max-shard-size", "300KB"]) == 0
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((dst / s).exists() for s in shards)
    tensors = {k: v for s in shards for k, v in load_file(dst / s).items()}
    assert tensors["language_model.lm_head.weight"].dtype == torch.bfloat16
    assert set(tensors) == set(index["weight_map"])
    # A second run into the same directory is refused unless --overwrite.
    assert main(["convert-official", str(src), str(dst)]) == 1
    assert main(["convert-official", str(src), str(dst), "--overwrite", "--pooling", "1d"]) == 0
    assert json.loads((dst / "config.json").read_text())["pooling"] == "1d"


def test_vision_weights_from_a_separate_clip_directory(tmp_path):
    state = official_state_dict(num_experts=1, seed=3)
    clip = {("vision_model." + k[len(CLIP_PREFIX):]): state.pop(k) for k in list(state) if k.startswith(CLIP_PREFIX)}
    clip.update({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.ones(())})
    src = write_official(tmp_path / "official", state, official_config(num_experts=1), shards=1)
    with pytest.raises(CheckpointError, match="vision_tower"):
        convert_official(str(src), str(tmp_path / "out"))
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    save_file(clip, str(clip_dir / "model.safetensors"))
    dst = Path(convert_official(str(src), str(tmp_path / "out"), vision_tower=str(clip_dir)))
    model = load_converted(dst)
    name = "embeddings.patch_embedding.weight"
    assert torch.equal(model.vision_tower.state_dict()[name], clip["vision_model." + name])
    dropped = {d["key"] for d in json.loads((dst / REPORT_FILE).read_text())["dropped"]}
    assert "clip::logit_scale" in dropped and "clip::text_model.embeddings.token_embedding.weight" in dropped


def test_config_translation(tmp_path):
    real = official_config(16, hidden_size=4096, mm_hidden_size=1024,
                           mm_vision_tower="./models/clip_vit_large_patch14_336",
                           mamba_dt_rank="auto", resamplePooling="1d", num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=65536)
    settings = build_sdk_config(real, tmp_path)
    cfg = settings.config
    assert cfg.vision_config.hidden_size == 1024 and cfg.vision_config.image_size == 336
    assert cfg.vision_config.num_hidden_layers == 24 and cfg.vision_config.patch_size == 14
    assert cfg.text_config.mamba_dt_rank == math.ceil(4096 / 16) == 256
    assert cfg.pooling == "1d" and "resamplePooling" in settings.pooling_source
    assert cfg.text_config.max_position_embeddings == 65536  # from the official n_ctx
    assert build_sdk_config(real, tmp_path, pooling="2d").config.pooling == "2d"
    assert build_sdk_config(dict(real, image_aspect_ratio="square"), tmp_path).pad_to_square is False
    with pytest.raises(CheckpointError, match="vision_config"):
        build_sdk_config(dict(real, mm_vision_tower="my-own-vit"), tmp_path)


def test_output_inside_source_is_refused(moe_case):
    _, src, _, _ = moe_case
    with pytest.raises(CheckpointError, match="inside the source"):
        convert_official(str(src), str(src / "converted"))
