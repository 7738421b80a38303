"""`make demo`: synthesize the bilingual corpus and pack it into shards, offline, on a CPU."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mooer.data.pack import format_summary, pack
from mooer.demo.corpus import draw_specs, write_corpus
from mooer.demo.espeak import EspeakError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="demo working directory")
    parser.add_argument("--num", type=int, default=3000, help="utterances to synthesize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=2)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    corpus = args.out / "corpus"
    print(f"[1/2] synthesizing {args.num} bilingual utterances into {corpus}")
    try:
        durations = write_corpus(corpus, draw_specs(args.num, args.seed), args.num_workers)
    except EspeakError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"      {sum(durations) / 60:.1f} min of audio")
    print(f"[2/2] packing shards into {args.out / 'shards'}")
    summary = pack(corpus / "wav.scp", corpus / "text", args.out / "shards",
                   num_utts_per_shard=500, num_threads=args.num_workers)
    print(format_summary(summary, (args.out / "shards").resolve()))
    print(f"demo data ready in {time.perf_counter() - started:.1f} s. "
          "Training and evaluation on it are not part of this release yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
