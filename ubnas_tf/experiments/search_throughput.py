"""Search-step throughput and peak memory of the UBNAS supernet.

Prints training images per second of the bilevel search step (architecture step on a
held-out batch + weight step on a training batch, both counted in the step time) and the
process's peak resident memory. Defaults are the CIFAR-10 search configuration
(16 channels, 8 cells, batch 64, 32x32x3, all default primitives); ``--preset=imagenet_proxy``
is that of flags/imagenet_search.flags (224x224x3 images, a stride-8 stem, batch 256, 1000
classes), and explicit options override a preset.

    python benchmarks/search_throughput.py [--channels 16 --cells 8 --batch 64 --image 32 ...]
    python benchmarks/search_throughput.py --preset=imagenet_proxy [--steps 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import tensorflow as tf

from ubnas_tf.graph_optimization import (
    add_graph_optimization_argument,
    apply_graph_optimization_argument,
)
from ubnas_tf.search import SearchNetwork

# The search configurations of the shipped flagfiles (tests/test_streams.py keeps them equal),
# except that cifar10 uses the batch of 64 at which the PyTorch EBNAS code was compared.
PRESETS = {
    "cifar10": dict(channels=16, cells=8, batch=64, image=32, image_channels=3, stem_strides=1,
                    num_classes=10, k_normal=8, k_reduce=4),
    "imagenet_proxy": dict(channels=16, cells=8, batch=256, image=224, image_channels=3,
                           stem_strides=8, num_classes=1000, k_normal=8, k_reduce=4),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cifar10",
                        help="configuration the other options start from")
    parser.add_argument("--channels", type=int, default=16, help="initial channels of the supernet")
    parser.add_argument("--cells", type=int, default=8, help="number of cells")
    parser.add_argument("--batch", type=int, default=64, help="training (and held-out) batch size")
    parser.add_argument("--image", type=int, default=32, help="image height and width")
    parser.add_argument("--image_channels", type=int, default=3, help="image channels")
    parser.add_argument("--stem_strides", type=int, default=1, help="total stride of the stem")
    parser.add_argument("--num_classes", type=int, default=10, help="classes of the classifier")
    parser.add_argument("--k_normal", type=int, default=8, help="channel sampling ratio, normal cells")
    parser.add_argument("--k_reduce", type=int, default=4, help="channel sampling ratio, reduction cells")
    parser.add_argument("--primitives", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed steps after tracing")
    parser.add_argument("--no_arch", action="store_true", help="time the warm-up step (weights only)")
    parser.add_argument("--threads", type=int, default=0, help="intra/inter-op threads (0: TF default)")
    add_graph_optimization_argument(parser, "tools/search.py")
    parser.set_defaults(**PRESETS[parser.parse_known_args(argv)[0].preset])
    args = parser.parse_args(argv)

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    apply_graph_optimization_argument(args)
    tf.keras.utils.set_random_seed(0)
    shape = (args.image, args.image, args.image_channels)
    model = SearchNetwork(args.num_classes, init_channels=args.channels, layers=args.cells,
                          stem_strides=args.stem_strides,
                          primitives=args.primitives.split(",") if args.primitives else None,
                          k_normal=args.k_normal, k_reduce=args.k_reduce, seed=0)
    model.compile()
    t0 = time.perf_counter()
    model.build_network(shape)
    model.set_arch_updates(not args.no_arch)
    n = args.batch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * n, *shape)).astype("float32")
    y = rng.integers(0, args.num_classes, size=2 * n).astype("int32")
    ds = tf.data.Dataset.from_tensors(((x[:n], y[:n]), (x[n:], y[n:]))).repeat()
    it = iter(ds)
    train_fn = model.make_train_function()
    print("tracing + first step ...", flush=True)
    train_fn(it)
    t_trace = time.perf_counter() - t0
    print(f"  build + trace + first step: {t_trace:.1f} s", flush=True)
    for _ in range(args.warmup_steps):
        train_fn(it)
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        logs = train_fn(it)
        float(logs["loss"])  # sync
        times.append(time.perf_counter() - t)
        print(f"  step {i + 1}/{args.steps}: {times[-1] * 1000:.0f} ms", flush=True)
    step = float(np.median(times))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "config": vars(args),
        "median_step_s": step,
        "images_per_s": n / step,
        "trace_s": t_trace,
        "peak_rss_mb": peak_mb,
        "arch_step": not args.no_arch,
    }
    print(f"\nsearch step ({'arch + weights' if not args.no_arch else 'weights only'}): "
          f"{step * 1000:.0f} ms median over {args.steps} steps -> "
          f"{n / step:.1f} training images/s; peak RSS {peak_mb:.0f} MB; trace {t_trace:.0f} s "
          f"({args.graph_optimization} graph optimization)")
    return result


def run() -> None:
    """The ``ubnas-bench-throughput`` console script (and ``python benchmarks/search_throughput.py``)."""
    main()


if __name__ == "__main__":
    run()
