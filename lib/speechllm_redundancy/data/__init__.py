"""Speech corpora: one manifest format, readers for real corpora, and the embedded synthetic corpus."""

from speechllm_redundancy.data.audio import SAMPLE_RATE, load_audio
from speechllm_redundancy.data.corpus import SPLITS, CorpusConfig, build_corpus, corpus_config, load_corpus
from speechllm_redundancy.data.manifest import Utterance, read_manifest, validate_manifest, write_manifest
from speechllm_redundancy.data.readers import (
    read_covost2,
    read_librispeech,
    read_librivox_testdata,
    read_loquacious,
)

__all__ = [
    "SAMPLE_RATE",
    "SPLITS",
    "CorpusConfig",
    "Utterance",
    "build_corpus",
    "corpus_config",
    "load_audio",
    "load_corpus",
    "read_covost2",
    "read_librispeech",
    "read_librivox_testdata",
    "read_loquacious",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
