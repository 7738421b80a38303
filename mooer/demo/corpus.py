"""Synthesize an offline bilingual speech corpus (Kaldi layout) with libespeak-ng.

    python -m mooer.demo.corpus --out data/demo --num 300 --seed 0

writes `wav/<uttid>.wav` (16 kHz mono 16-bit), `wav.scp`, `text` (transcripts), `text.en`
(English translations, for AST) and `utt2spk`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mooer.data.audio import resample, wav_bytes
from mooer.data.parallel import parallel_map
from mooer.demo.espeak import Espeak, EspeakError
from mooer.demo.grammar import EXTRA_KINDS, KINDS, sample_sentence

SAMPLE_RATE = 16000
ZH_VOICES = ("cmn", "cmn+f1", "cmn+f2", "cmn+f3", "cmn+f4", "cmn+f5", "cmn+m1", "cmn+m2",
             "cmn+m3", "cmn+m4", "cmn+m5", "cmn+m6", "cmn+m7")
EN_VOICES = ("en-us", "en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+f5", "en-us+m1",
             "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m5", "en-us+m6", "en-us+m7")


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to synthesize one utterance, drawn up front so results are seeded."""

    uttid: str
    lang: str
    text: str
    translation: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    seed: int


def speaker_id(voice: str) -> str:
    """Kaldi-style speaker id of a voice name ('cmn+f3' -> 'cmn_f3')."""
    return voice.replace("+", "_").replace("-", "")


def draw_specs(num: int, seed: int, english_ratio: float = 0.3,
               zh_voices: tuple[str, ...] = ZH_VOICES, en_voices: tuple[str, ...] = EN_VOICES,
               kinds: tuple[str, ...] = KINDS) -> list[UtteranceSpec]:
    """Draw `num` utterances: sentences, voices and prosody, reproducibly from `seed`."""
    rng = random.Random(seed)
    specs = []
    for index in range(num):
        sentence = sample_sentence(rng, kinds)
        english = rng.random() < english_ratio
        voice = rng.choice(en_voices if english else zh_voices)
        specs.append(UtteranceSpec(
            uttid=f"{speaker_id(voice)}-{seed:03d}{index:06d}",
            lang="en" if english else "zh",
            text=sentence.en if english else sentence.zh,
            translation=sentence.en,
            voice=voice,
            rate=rng.randint(140, 200),
            pitch=rng.randint(30, 70),
            pitch_range=rng.randint(30, 80),
            seed=rng.getrandbits(32),
        ))
    return specs


def synthesize(spec: UtteranceSpec) -> np.ndarray:
    """Speak one utterance: 16 kHz float32 mono with a faint noise floor (no digital silence)."""
    engine = Espeak.get()
    samples = engine.synthesize(spec.text, spec.voice, spec.rate, spec.pitch, spec.pitch_range)
    audio = resample(samples.astype(np.float32) / 32768, engine.sample_rate, SAMPLE_RATE)
    noise = np.random.default_rng(spec.seed).normal(0.0, 3e-4, size=audio.shape)
    return (audio + noise).astype(np.float32)


def _write_one(job: tuple[UtteranceSpec, Path]) -> float:
    spec, path = job
    audio = synthesize(spec)
    path.write_bytes(wav_bytes(audio, SAMPLE_RATE))
    return len(audio) / SAMPLE_RATE


def write_corpus(out: Path, specs: list[UtteranceSpec], num_workers: int = 1,
                 progress: bool = True) -> list[float]:
    """Synthesize `specs` into `out` (Kaldi layout); returns each utterance's duration in seconds."""
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, (wav_dir / f"{spec.uttid}.wav").resolve()) for spec in specs]
    with parallel_map(_write_one, jobs, num_workers, chunksize=16) as results:
        durations = list(tqdm(results, total=len(jobs), desc="synthesizing", unit="utt",
                              disable=not progress))
    ordered = sorted(jobs, key=lambda job: job[0].uttid)
    _write_table(out / "wav.scp", ((s.uttid, str(p)) for s, p in ordered))
    _write_table(out / "text", ((s.uttid, s.text) for s, _ in ordered))
    _write_table(out / "text.en", ((s.uttid, s.translation) for s, _ in ordered))
    _write_table(out / "utt2spk", ((s.uttid, speaker_id(s.voice)) for s, _ in ordered))
    return durations


def _write_table(path: Path, rows) -> None:
    path.write_text("".join(f"{key} {value}\n" for key, value in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--num", type=int, default=300, help="number of utterances")
    parser.add_argument("--seed", type=int, default=0, help="random seed (sentences, voices, prosody)")
    parser.add_argument("--english_ratio", type=float, default=0.3,
                        help="share of utterances spoken in English (the rest in Mandarin)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated sentence kinds: " + ", ".join(KINDS + EXTRA_KINDS)
                        + " (name, zh_name: sentences with rare proper names, English or "
                        "Han, for hotwords)")
    parser.add_argument("--num_workers", type=int, default=min(4, multiprocessing.cpu_count()),
                        help="synthesis processes")
    args = parser.parse_args(argv)
    if args.num <= 0:
        parser.error("--num must be positive")
    kinds = tuple(args.kinds.split(","))
    unknown = sorted(set(kinds) - set(KINDS) - set(EXTRA_KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS + EXTRA_KINDS)}")
    specs = draw_specs(args.num, args.seed, args.english_ratio, kinds=kinds)
    try:
        durations = write_corpus(args.out, specs, args.num_workers)
    except EspeakError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    hours = sum(durations) / 3600
    print(f"wrote {len(specs)} utterances ({hours * 60:.1f} min of audio) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
