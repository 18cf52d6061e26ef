"""Streamed input pipeline alone: images/s and peak memory at two dataset sizes.

Runs the streamed training pipeline of `ubnas_tf.data.streams` (the one
flags/imagenet_search.flags and flags/imagenet_train.flags use: read, shuffle, decode,
random-resized crop + flip to 224x224, standardise, batch) over one pass of N examples of
imagenet2012 served by `tfds.testing.mock_data`, for each N of --sizes. The records are real
JPEGs of ImageNet's typical size (--jpeg_size, default 500x375, smooth content that
compresses like a photo), so decoding and resizing cost what they cost on ImageNet; the
reading of files from disk is not measured (tfds reads a few MB/s per image stream at most).

Each measurement runs in a fresh process, so its peak resident memory (VmHWM) is its own;
medians over --runs. Flat memory means the peaks at two sizes 10x apart differ by under
10 %. With --search_images_per_s (from `benchmarks/search_throughput.py
--preset=imagenet_proxy`), it also prints how many times the search step's rate the pipeline
delivers (the target is at least 5x: data is never the bottleneck).

    python benchmarks/input_pipeline.py [--sizes=2500,25000 --runs=3 --batch=64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from ubnas_tf.io_utils import atomic_write_json

_MEASURE = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from ubnas_tf.data import get_info, streams

n, batch, width, height, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(0)
# 16 distinct photo-like JPEGs (smooth colour fields), cycled over the n records.
jpegs = []
for i in range(16):
    small = rng.uniform(0, 255, (height // 16, width // 16, 3)).astype(np.float32)
    image = tf.image.resize(small[None], (height, width), method="bicubic")[0]
    jpegs.append(tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90))
jpegs = tf.stack(jpegs)


def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    ds = tf.data.Dataset.range(n).map(lambda i: {
        "image": jpegs[i % 16], "label": i % 1000, "file_name": tf.strings.as_string(i)})
    return ds.apply(tf.data.experimental.assert_cardinality(n))


info = get_info("imagenet2012")
with tfds.testing.mock_data(num_examples=n, as_dataset_fn=as_dataset):
    source = streams.stream_source("imagenet2012", "train", None, 0, n)
    ds = streams.streamed_train_dataset(source, info, batch, seed=0, epochs=1, augment=True)
    it = iter(ds)
    next(it)  # pipeline start-up, not throughput
    t0 = time.perf_counter()
    count = 0
    for x, y in it:
        count += int(x.shape[0])
    rate = count / (time.perf_counter() - t0)
with open("/proc/self/status") as f:
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(out, "w") as f:
    json.dump({"examples": n, "images_per_s": rate, "peak_rss_mb": peak_kb / 1024}, f)
"""


def _measure(n: int, batch: int, jpeg_size: tuple[int, int]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(n), str(batch),
                               str(jpeg_size[0]), str(jpeg_size[1]), out], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"measurement of {n} examples failed:\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Both above the shuffle buffer (streams.SHUFFLE_BUFFER records), which a smaller pass
    # does not fill.
    parser.add_argument("--sizes", default="2500,25000",
                        help="comma-separated dataset sizes (examples per pass)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per size (median)")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--jpeg_size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--search_images_per_s", type=float, default=None,
                        help="the search step's images/s to compare with")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    width, height = (int(v) for v in args.jpeg_size.lower().split("x"))
    if args.runs < 1 or any(s < args.batch for s in sizes):
        parser.error("--runs must be >= 1 and every size at least --batch")

    rows = []
    for n in sizes:
        runs = []
        for i in range(args.runs):
            runs.append(_measure(n, args.batch, (width, height)))
            print(f"  {n:>7,} examples, run {i + 1}/{args.runs}: {runs[-1]['images_per_s']:.0f} "
                  f"images/s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
        rows.append({"examples": n,
                     "images_per_s": statistics.median(r["images_per_s"] for r in runs),
                     "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                     "runs": runs})
    print(f"\nStreamed imagenet2012 training pipeline, {width}x{height} JPEGs -> 224x224, batch "
          f"{args.batch} (medians of {args.runs} runs):")
    print("| examples per pass | images/s | peak RSS (MB) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['examples']:,} | {row['images_per_s']:.0f} | {row['peak_rss_mb']:.0f} |")
    peaks = [r["peak_rss_mb"] for r in rows]
    growth = (max(peaks) - min(peaks)) / min(peaks)
    result = {"rows": rows, "peak_rss_spread": growth, "batch": args.batch,
              "jpeg_size": [width, height]}
    print(f"Peak RSS spread across sizes: {growth * 100:.1f} % (flat: under 10 %).")
    if args.search_images_per_s:
        ratio = min(r["images_per_s"] for r in rows) / args.search_images_per_s
        result["pipeline_over_search_step"] = ratio
        print(f"Pipeline / search step: {ratio:.0f}x the search step's "
              f"{args.search_images_per_s:g} images/s (target: at least 5x).")
    if args.output:
        atomic_write_json(args.output, result)
    return result


def run() -> None:
    """The ``ubnas-bench-input`` console script (and ``python benchmarks/input_pipeline.py``)."""
    main()


if __name__ == "__main__":
    run()
