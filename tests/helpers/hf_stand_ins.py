"""Stand-ins for what lives on the model hub, which is unreachable here: tokenizers written
from files (SigLIP's SentencePiece, BLIP's BERT WordPiece) and small BLIP configurations.

Each tokenizer is a word-level one over the words of the given texts, saved by
``save_pretrained`` into a folder that ``transformers.AutoTokenizer.from_pretrained`` loads as
it would load a local copy of the real one (``backbone.tokenizer=<folder>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The lower-cased words and punctuation of ``texts``, sorted."""
    return sorted({token for text in texts for token in WORD.findall(text.lower())})


def write_sentencepiece_like(folder: Path, texts: Iterable[str]) -> Path:
    """A SigLIP-like tokenizer: ``<pad>`` 0, ``</s>`` 1 appended to each text, ``<unk>`` 2, words."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + vocabulary(texts))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD.pattern), behavior="isolated")]
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def write_bert_like(folder: Path, texts: Iterable[str]) -> Path:
    """A BLIP-like (BERT) tokenizer: a ``vocab.txt`` of ``[PAD]`` 0, BERT's special tokens and the words."""
    import inspect

    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(specials + vocabulary(texts)) + "\n")
    # transformers 5 takes the vocabulary as ``vocab``, 4.x as ``vocab_file``
    keyword = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{keyword: str(vocab_file)}).save_pretrained(folder)
    return folder


def small_blip(width: int, layers: int, image_size: int, patch_size: int) -> dict[str, Any]:
    """``BlipConfig`` fields of a BLIP with ``layers`` blocks of ``width`` per tower (``backbone.config``)."""
    tower = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 32),
    }
    return {
        "vision_config": {**tower, "image_size": image_size, "patch_size": patch_size},
        "text_config": {**tower, "max_position_embeddings": 128},
        "image_text_hidden_size": width,
    }


def blip_overrides(config: dict[str, Any], tokenizer: Path) -> list[str]:
    """``backbone=blip_b`` with random weights of ``config``'s shape and the tokenizer in ``tokenizer``."""
    fields = [
        f"+backbone.config.{tower}.{key}={value}"
        for tower in ("vision_config", "text_config")
        for key, value in config[tower].items()
    ]
    return [
        "backbone=blip_b",
        "backbone.pretrained=null",
        f"backbone.tokenizer={tokenizer}",
        "backbone.config={}",
        *fields,
        f"+backbone.config.image_text_hidden_size={config['image_text_hidden_size']}",
    ]
