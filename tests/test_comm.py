"""The analytic communication calculator: exact shapes, LoRA sizes, config parsing, and the paper's ratio."""

from __future__ import annotations

import json

import pytest

from semcon.comm import (
    ARCHS,
    LINEAR_MODULES,
    Arch,
    arch_from_config,
    bytes_per_round,
    comm_report,
    human_bytes,
    lora_fedavg_ratio,
    lora_parameters,
    parse_targets,
    resolve_arch,
    synthetic_answers,
    text_payload,
)
from semcon.protocol import Upload, decode, encode, raw_bytes, text_limits

# Published totals (model cards / safetensors metadata).
PUBLISHED = {
    "llama-3.2-1b": 1.24e9, "llama-3.2-3b": 3.21e9, "llama-3.1-8b": 8.03e9, "llama-3.1-70b": 70.6e9,
    "llama-3.1-405b": 405.9e9, "smollm2-135m": 134.5e6, "qwen2.5-0.5b": 494e6, "qwen2.5-7b": 7.62e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_one_percent_of_published(name):
    assert ARCHS[name].num_parameters() == pytest.approx(PUBLISHED[name], rel=0.01)


def test_exact_parameter_counts_of_small_models():
    # SmolLM2-135M: tied 49152x576 embedding + 30 x (linears + 2 norms) + final norm.
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3 + 2 * 576
    assert ARCHS["smollm2-135m"].num_parameters() == 49152 * 576 + 30 * per_layer + 576 == 134_515_008
    # Qwen2.5-0.5B carries q/k/v biases; the count then matches the published 494,032,768 exactly.
    assert ARCHS["qwen2.5-0.5b"].num_parameters() == 494_032_768


def test_linear_shapes_follow_gqa_and_head_dim():
    shapes = ARCHS["llama-3.1-405b"].linear_shapes()
    assert shapes["q_proj"] == (16384, 16384) and shapes["k_proj"] == (16384, 1024)
    assert shapes["o_proj"] == (16384, 16384) and shapes["down_proj"] == (53248, 16384)
    assert set(shapes) == set(LINEAR_MODULES)
    # head_dim larger than hidden/heads (Gemma-3 style) widens q and o.
    wide = Arch(name="w", hidden_size=640, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=1, head_dim=256, vocab_size=10, tie_word_embeddings=True)
    assert wide.linear_shapes()["q_proj"] == (640, 1024) and wide.linear_shapes()["o_proj"] == (1024, 640)
    assert ARCHS["smollm2-135m"].head_dim == 64


def test_lora_all_linear_smollm2_by_hand():
    per_layer = (576 + 576) + (576 + 192) + (576 + 192) + (576 + 576) + (576 + 1536) + (576 + 1536) + (1536 + 576)
    assert per_layer == 10176
    assert lora_parameters(ARCHS["smollm2-135m"], 16, "all-linear") == 16 * per_layer * 30 == 4_884_480


def test_lora_q_v_llama_8b_by_hand():
    # q: 4096 -> 4096, v: 4096 -> 8 kv heads x 128 = 1024; 32 layers.
    expected = 32 * 32 * ((4096 + 4096) + (4096 + 1024))
    assert expected == 13_631_488
    assert lora_parameters(ARCHS["llama-3.1-8b"], 32, ["q_proj", "v_proj"]) == expected
    assert lora_parameters(ARCHS["llama-3.1-8b"], 32, "v_proj,q_proj") == expected  # order, string form
    assert lora_parameters(ARCHS["llama-3.1-8b"], 32, ["q_proj", "q_proj", "v_proj"]) == expected  # dedup


def test_unknown_target_and_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"unknown LoRA target.*qkv_proj.*valid.*all-linear.*q_proj"):
        lora_parameters(ARCHS["llama-3.1-8b"], 16, ["q_proj", "qkv_proj"])
    with pytest.raises(ValueError, match="no LoRA targets"):
        parse_targets([])
    with pytest.raises(ValueError, match="rank"):
        lora_parameters(ARCHS["llama-3.1-8b"], 0)
    with pytest.raises(ValueError, match="dtype"):
        bytes_per_round(ARCHS["smollm2-135m"], dtype="int3", prompts=2, mean_answer_bytes=10)


def test_arch_from_config_file_dir_and_dict(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(cfg))
    for source in (model_dir, model_dir / "config.json", str(model_dir)):
        arch = arch_from_config(source)
        assert arch.name == "my-model"
        assert arch.num_parameters() == ARCHS["smollm2-135m"].num_parameters()
        assert lora_parameters(arch, 16) == 4_884_480
    assert resolve_arch(str(model_dir)).num_parameters() == 134_515_008
    from_dict = arch_from_config({**cfg, "model_type": "qwen2"}, name="q")
    assert from_dict.name == "q" and from_dict.attention_bias  # Qwen2 biases are implied by model_type
    no_kv = arch_from_config({k: v for k, v in cfg.items() if k != "num_key_value_heads"})
    assert no_kv.num_key_value_heads == 9  # MHA when the key is absent, as in transformers


def test_arch_from_config_names_missing_key_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "vocab_size": 100}))
    with pytest.raises(ValueError, match=r"config\.json.*missing required key 'intermediate_size'") as err:
        arch_from_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="no such config file"):
        arch_from_config(tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown architecture"):
        resolve_arch("llama-9")


def test_synthetic_text_has_exact_size_and_roundtrips():
    answers = synthetic_answers(101, 400, seed=3)
    assert len(answers) == 101 and sum(len(a.encode()) for a in answers.values()) == 101 * 400
    assert len({len(a) for a in answers.values()}) > 10  # lengths vary around the mean
    assert answers == synthetic_answers(101, 400, seed=3)  # seeded
    up = Upload(round=1, client="c", answers=answers)
    assert raw_bytes(up) == 40_400 and decode(encode(up), text_limits(101, 4000)) == up


def test_text_payload_is_measured_by_the_codec():
    payload = text_payload(200, 400)
    assert payload.raw_up == payload.raw_down == 80_000
    assert 1.5 < payload.compression < 8  # English-like text compresses, but not to nothing
    answers = synthetic_answers(200, 400, seed=0)
    bare = len(encode(Upload(round=1, client="client-0", answers=answers)))
    assert bare < payload.encoded_up < bare + 200 * 20  # plus a flag and a float64 confidence per answer


def test_rows_up_down_and_ratios():
    rows = bytes_per_round(ARCHS["llama-3.1-8b"], rank=16, targets="all-linear", dtype="fp32",
                           prompts=100, mean_answer_bytes=400)
    by = {r["method"]: r for r in rows}
    full, lora = by["full FedAvg"], by["LoRA-FedAvg"]
    raw, enc = by["semantic consensus (raw text)"], by["semantic consensus (encoded)"]
    assert full["up_bytes"] == full["down_bytes"] == 8_030_261_248 * 4
    assert lora["up_bytes"] == lora["down_bytes"] == lora_parameters(ARCHS["llama-3.1-8b"], 16) * 4
    assert raw["up_bytes"] == raw["down_bytes"] == 40_000 and raw["x_semcon_raw"] == 1.0
    assert enc["total_bytes"] < raw["total_bytes"] and enc["x_semcon_encoded"] == 1.0
    assert lora["x_semcon_raw"] == lora["total_bytes"] / raw["total_bytes"]
    assert lora["x_semcon_encoded"] == pytest.approx(lora["x_semcon_raw"] * raw["total_bytes"] / enc["total_bytes"])
    assert full["x_semcon_raw"] > lora["x_semcon_raw"] > 1
    assert {r["model"] for r in rows} == {"llama-3.1-8b"}


def test_llama_405b_ratio_matches_paper():
    # Paper: ~1006x less than LoRA-FedAvg. LoRA r=32 on q_proj,v_proj, bf16 =
    # 126 x 32 x ((16384+16384) + (16384+1024)) = 202,309,632 params = 404,619,264 B each way; text 400,000 B
    # each way. Up and down are counted for both methods (both symmetric), so the ratio is 1011.5x.
    arch = ARCHS["llama-3.1-405b"]
    assert lora_parameters(arch, 32, ["q_proj", "v_proj"]) == 202_309_632
    ratio = lora_fedavg_ratio(arch, 32, ["q_proj", "v_proj"], "bf16", 1000, 400)
    assert ratio == pytest.approx(404_619_264 / 400_000)
    assert ratio == pytest.approx(1006, rel=0.10)
    rows = bytes_per_round(arch, rank=32, targets=["q_proj", "v_proj"], dtype="bf16")
    lora = next(r for r in rows if r["method"] == "LoRA-FedAvg")
    assert lora["x_semcon_raw"] == pytest.approx(ratio)


def test_comm_report_rows_and_assumptions():
    archs = [ARCHS["smollm2-135m"], ARCHS["llama-3.1-405b"]]
    rows, assumptions = comm_report(archs, rank=16, targets="all-linear", dtype="bf16", prompts=50,
                                    mean_answer_bytes=300)
    assert len(rows) == 8 and [r["model"] for r in rows[::4]] == ["smollm2-135m", "llama-3.1-405b"]
    assert all(set(r) == set(rows[0]) for r in rows)
    text = "\n".join(assumptions)
    assert "measured" in text and "zstd level 10" in text and "1011.5x" in text and "1006" in text
    assert "(16384+16384) + (16384+1024)" in text


def test_human_bytes():
    assert human_bytes(0) == "0 B" and human_bytes(999) == "999 B"
    assert human_bytes(1000) == "1.00 KB" and human_bytes(1_234_567) == "1.23 MB"
    assert human_bytes(999_999) == "1.00 MB" and human_bytes(404_619_264) == "405 MB"
    assert human_bytes(1.62e12) == "1.62 TB" and human_bytes(12_345_678_901) == "12.3 GB"
