"""Readers for real corpora, on tiny fixture trees in the layouts the corpora are released in."""

import numpy as np
import pytest
import soundfile as sf

from speechllm_redundancy.data.manifest import read_manifest, validate_manifest, write_manifest
from speechllm_redundancy.data.readers import (
    LIBRIVOX_TESTDATA,
    read_covost2,
    read_external,
    read_librispeech,
    read_librivox_testdata,
    read_loquacious,
)
from speechllm_redundancy.errors import UserError


def _audio(path, seconds=0.4, rate=16000, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format=fmt)
    return path


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    for subset, speaker, chapter, n in (
        ("test-clean", "1089", "134686", 2),
        ("test-other", "1688", "142285", 1),
    ):
        folder = root / subset / speaker / chapter
        lines = []
        for i in range(n):
            uid = f"{speaker}-{chapter}-{i:04d}"
            _audio(folder / f"{uid}.flac", fmt="FLAC")
            lines.append(f"{uid} HE HOPED THERE WOULD BE STEW FOR DINNER {i}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech(librispeech, tmp_path):
    utts = read_librispeech(librispeech, "test-clean")
    assert [u.id for u in utts] == ["1089-134686-0000", "1089-134686-0001"]
    assert utts[0].text == "HE HOPED THERE WOULD BE STEW FOR DINNER 0" and utts[0].speaker == "1089"
    assert utts[0].sample_rate == 16000 and utts[0].duration == pytest.approx(0.4)
    assert len(read_librispeech(librispeech, ["test-clean", "test-other"])) == 3
    write_manifest(tmp_path / "m.jsonl", utts)
    assert validate_manifest(tmp_path / "m.jsonl")["utterances"] == 2


def test_librispeech_errors(librispeech):
    with pytest.raises(UserError, match="subset 'dev-clean'.* does not exist"):
        read_librispeech(librispeech, "dev-clean")
    (librispeech / "test-clean" / "1089" / "134686" / "1089-134686-0001.flac").unlink()
    with pytest.raises(UserError, match=r"1089-134686.trans.txt:2: audio file .*0001.flac is missing"):
        read_librispeech(librispeech, "test-clean")


def test_loquacious_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    def wav_bytes(seconds):
        buf = io.BytesIO()
        sf.write(buf, np.zeros(int(seconds * 16000), np.float32), 16000, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    root = tmp_path / "LoquaciousSet"
    for split, n in (("dev", 3), ("test", 2)):
        rows = [
            {
                "ID": f"{split}_{i}",
                "duration": 0.5,
                "wav": {"bytes": wav_bytes(0.5), "path": f"{split}_{i}.wav"},
                "spk_id": f"s{i}",
                "sex": "female",
                "text": f"words of utterance {i}",
            }
            for i in range(n)
        ]
        (root / "data" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / split / f"{split}-00000-of-00001.parquet")
    utts = read_loquacious(root, "dev", audio_dir=tmp_path / "audio")
    assert [u.id for u in utts] == ["dev_0", "dev_1", "dev_2"]
    assert utts[1].text == "words of utterance 1" and utts[1].speaker == "s1"
    assert utts[0].duration == pytest.approx(0.5) and (tmp_path / "audio" / "dev_0.wav").is_file()
    assert len(read_loquacious(root, "test", audio_dir=tmp_path / "audio", limit=1)) == 1
    with pytest.raises(UserError, match="no Parquet shards for split 'train'"):
        read_loquacious(root, "train", audio_dir=tmp_path / "audio")


def test_loquacious_exported_csv(tmp_path):
    root = tmp_path / "loq"
    _audio(root / "wavs" / "a.wav")
    (root / "dev.csv").write_text("ID,duration,wav,spk_id,text\na,0.4,wavs/a.wav,s1,hello world\n")
    (utt,) = read_loquacious(root, "dev")
    assert utt.id == "a" and utt.audio == str(root / "wavs" / "a.wav") and utt.speaker == "s1"
    (root / "dev.csv").write_text("ID,duration,wav,spk_id,text\na,0.4,wavs/a.wav,s1,\n")
    with pytest.raises(UserError, match=r"dev.csv:2: empty text"):
        read_loquacious(root, "dev")


@pytest.fixture
def covost(tmp_path):
    clips = tmp_path / "cv" / "en" / "clips"
    for name in ("c1", "c2", "c3", "c4"):
        _audio(clips / f"common_voice_en_{name}.mp3", rate=48000, fmt="MP3")
    tsv = tmp_path / "covost_v2.en_de.tsv"
    rows = [
        ("common_voice_en_c1.mp3", 'He said "yes".', "Er sagte „ja“.", "client1", "train"),
        ("common_voice_en_c2.mp3", "Good morning.", "Guten Morgen.", "client2", "train_covost"),
        ("common_voice_en_c3.mp3", "Thank you.", "Danke.", "client3", "dev"),
        ("common_voice_en_c4.mp3", "See you.", "Bis bald.", "client4", "test"),
    ]
    tsv.write_text(
        "path\tsentence\ttranslation\tclient_id\tsplit\n" + "".join("\t".join(r) + "\n" for r in rows)
    )
    return tsv, clips


def test_covost2(covost, tmp_path):
    tsv, clips = covost
    train = read_covost2(tsv, clips, "train")
    assert [u.id for u in train] == [
        "common_voice_en_c1",
        "common_voice_en_c2",
    ]  # train includes train_covost
    assert train[0].text == 'He said "yes".' and train[0].translation == "Er sagte „ja“."
    assert (train[0].src_lang, train[0].tgt_lang, train[0].sample_rate) == ("en", "de", 48000)
    (test,) = read_covost2(tsv, clips, "test")
    assert test.translation == "Bis bald."
    write_manifest(tmp_path / "m.jsonl", train)
    assert read_manifest(tmp_path / "m.jsonl") == train


def test_covost2_sentences_from_common_voice_tsv(covost, tmp_path):
    tsv, clips = covost
    lines = tsv.read_text().splitlines()
    bare = tmp_path / "bare" / "covost_v2.en_de.tsv"
    bare.parent.mkdir()
    bare.write_text(
        "\n".join("\t".join(c for i, c in enumerate(l.split("\t")) if i != 1) for l in lines) + "\n"
    )
    with pytest.raises(UserError, match="no sentence column: pass Common Voice's validated.tsv"):
        read_covost2(bare, clips, "dev")
    validated = tmp_path / "validated.tsv"
    validated.write_text("client_id\tpath\tsentence\nclient3\tcommon_voice_en_c3.mp3\tThank you.\n")
    (utt,) = read_covost2(bare, clips, "dev", cv_tsv=validated)
    assert utt.text == "Thank you." and utt.translation == "Danke."


def test_covost2_errors(covost, tmp_path):
    tsv, clips = covost
    with pytest.raises(UserError, match="covost_v2.<src>_<tgt>.tsv"):
        read_covost2(tmp_path / "pairs.tsv", clips)
    (clips / "common_voice_en_c3.mp3").unlink()
    with pytest.raises(UserError, match=r"covost_v2.en_de.tsv:4: audio file .*c3.mp3 is missing"):
        read_covost2(tsv, clips, "dev")


@pytest.mark.skipif(not LIBRIVOX_TESTDATA.is_dir(), reason="Debian pocketsphinx-testdata not installed")
def test_pocketsphinx_librivox_clips():
    utts = read_librivox_testdata()
    assert len(utts) == 5 and all(u.sample_rate == 16000 for u in utts)
    assert utts[1].text == "he was not an ill disposed young man"
    assert sum(u.duration for u in utts) == pytest.approx(24.73, abs=0.05)


def test_librivox_missing_names_the_package(tmp_path):
    with pytest.raises(UserError, match="pocketsphinx-testdata"):
        read_librivox_testdata(tmp_path)


def test_read_external_dispatch(librispeech, tmp_path):
    utts = read_external(
        {"reader": "librispeech", "root": str(librispeech), "subsets": "test-other"}, tmp_path
    )
    assert len(utts) == 1
    with pytest.raises(UserError, match="unknown reader 'timit'"):
        read_external({"reader": "timit"}, tmp_path)
    with pytest.raises(UserError, match="reader 'librispeech': bad options"):
        read_external({"reader": "librispeech", "folder": "x"}, tmp_path)
