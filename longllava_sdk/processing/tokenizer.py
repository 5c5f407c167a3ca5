"""A small byte-level BPE tokenizer built locally, for tests and the tiny preset.

Real checkpoints ship their own (Jamba) tokenizer, loaded from the checkpoint directory.
This one is trained in milliseconds on a fixed corpus, so it is identical on every machine
and needs no download. Token ids 0/1/2 match Jamba's pad / bos / eos.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .protocol import BOS, EOS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|pad|>", BOS, EOS, "<|unk|>", "<|User|>", "<|Assistant|>"]

# Words the demo recipes, tests and protocol use, so they tokenize compactly.
_CORPUS = """
<img></img><vid></vid><t> <img></img><img></img>
What is shown in the image? Describe the scan. Which of the images contains the red square?
The answer is yes. The answer is no. Image 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 0
Is there a nodule in the lung? Is there pleural effusion? cardiomegaly emphysema atelectasis
Classify this scene: forest, river, urban, farmland, water, highway, industrial, residential.
What happens in the video? A ball moves from left to right. The person walks.
axial coronal sagittal slice volume CT MRI chest abdomen liver bone brain window level
remote sensing satellite tile scene thumbnail band red green blue near infrared
a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
the of and to in is it that for on with as was at by this be are from or have an they
Question: Answer: Yes No True False left right top bottom center color shape count
"""


def build_bpe(vocab_size: int = 512) -> Tokenizer:
    """The trained byte-level BPE itself (the ``tokenizers`` object, no transformers: the planner counts with it)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tokenizer


def build_tokenizer(vocab_size: int = 512) -> "PreTrainedTokenizerFast":
    """Train and return a byte-level BPE tokenizer with ``vocab_size`` entries at most."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_bpe(vocab_size),
        pad_token="<|pad|>",
        bos_token=BOS,
        eos_token=EOS,
        unk_token="<|unk|>",
        additional_special_tokens=["<|User|>", "<|Assistant|>"],
    )
    fast.padding_side = "left"
    return fast
