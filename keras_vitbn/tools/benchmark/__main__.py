"""`python -m keras_vitbn.tools.benchmark`: see `keras_vitbn.tools.benchmark`."""

import datetime
import os
import sys

from keras_vitbn.tools.benchmark import results_csv
from keras_vitbn.tools.benchmark.run import BACKENDS, MODELS, format_markdown, run_benchmark, write_results
from keras_vitbn.training.config import DTYPE_POLICIES
from keras_vitbn.utils.cli_errors import ArgumentParser, command
from keras_vitbn.utils.machine import cpu_id

SMOKE = {"depth": 1, "steps": 2, "windows": 1, "epoch_images": 200, "infer_batch": 50, "infer_repeats": 1}


def build_parser():
    parser = ArgumentParser(
        prog="python -m keras_vitbn.tools.benchmark",
        description="Training speed of the Keras ViT models on each backend against a plain-PyTorch yardstick.",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed window (default 20)")
    parser.add_argument("--windows", type=int, default=10, help="timed windows after the warm-up epoch (default 10)")
    parser.add_argument(
        "--settings",
        choices=("tuned", "keras-default"),
        default="tuned",
        help="compile settings: keras_vitbn.runtime.performance.fit_settings (tuned) or Keras' defaults",
    )
    parser.add_argument(
        "--jit",
        choices=("default", "on", "off", "auto"),
        default="default",
        help="override jit_compile on every backend (default: the --settings value)",
    )
    parser.add_argument("--steps-per-execution", type=int, default=None, help="override steps_per_execution")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: all cores)")
    parser.add_argument("--epoch-images", type=int, default=5_000, help="images of the real epoch; 0 skips it")
    parser.add_argument("--epoch-repeats", type=int, default=3, help="timed real epochs after a warm-up epoch (median)")
    parser.add_argument("--epoch-dataset", default="fashion_mnist")
    parser.add_argument("--epoch-source", default="idx", help="data source of the real epoch (see TrainConfig)")
    parser.add_argument("--epoch-data-dir", default=None, help="IDX directory (default: DATA_ROOT/fashion-mnist)")
    parser.add_argument("--infer-batch", type=int, default=5000, help="inference batch; 0 skips inference")
    parser.add_argument("--infer-repeats", type=int, default=3)
    parser.add_argument(
        "--dtype-policy",
        default="float32",
        choices=DTYPE_POLICIES,
        help="mixed_bfloat16: bfloat16 products, float32 weights and BatchNorm statistics, on every backend and "
        "the yardstick (torch.autocast); the share of peak is then of the bfloat16 matmul peak (default %(default)s)",
    )
    parser.add_argument("--no-yardstick", action="store_true", help="skip the plain-PyTorch yardstick")
    parser.add_argument(
        "--yardstick-attention",
        choices=("math", "sdpa"),
        default="math",
        help="yardstick attention: the reference's matmul-softmax-matmul (math) or PyTorch SDPA",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="the data folder (default: $KERAS_VITBN_DATA); without one the timed batches are random pixels "
        "and the real epoch needs --epoch-data-dir",
    )
    parser.add_argument(
        "--output", default=None, help="write OUTPUT.json and OUTPUT.md (default runs/benchmark/<time>)"
    )
    parser.add_argument(
        "--results-csv",
        default="auto",
        metavar="PATH",
        help="append one row per model and backend to this CSV; auto (default): "
        "results/benchmarks/benchmark-<cpu>-<n>cpu[-<dtype policy>].csv, except with --smoke; none: no CSV",
    )
    parser.add_argument("--smoke", action="store_true", help="a short structural run (depth 1, 2 steps) for CI")
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    kwargs = dict(
        models=args.models,
        depth=args.depth,
        batch_size=args.batch_size,
        backends=args.backends,
        steps=args.steps,
        windows=args.windows,
        jit=args.jit,
        settings=args.settings,
        steps_per_execution=args.steps_per_execution,
        threads=args.threads,
        epoch_images=args.epoch_images,
        epoch_repeats=args.epoch_repeats,
        epoch_dataset=args.epoch_dataset,
        epoch_source=args.epoch_source,
        epoch_data_dir=args.epoch_data_dir,
        infer_batch=args.infer_batch,
        infer_repeats=args.infer_repeats,
        dtype_policy=args.dtype_policy,
        yardstick=not args.no_yardstick,
        yardstick_options={"attention": args.yardstick_attention},
        data_root=args.data_root,
    )
    if args.smoke:
        kwargs.update(SMOKE)
    output = args.output or os.path.join(
        "runs", "benchmark", datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    )
    try:  # before minutes of benchmarking
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the folder of --output {output}: {error.strerror}") from None
    results = run_benchmark(**kwargs, partial_path=output + ".partial.json")
    results["machine"]["cpu_id"] = cpu_id()
    print(format_markdown(results))
    json_path, md_path = write_results(results, output)
    print(f"wrote {json_path} and {md_path}")
    csv_path = args.results_csv
    if csv_path == "auto":
        csv_path = None if args.smoke else results_csv.default_path(results)
    if csv_path and csv_path != "none":
        count = results_csv.append(results, csv_path, output=output)
        print(f"appended {count} rows to {csv_path}")
    return 0 if results["same_work"] else 1


if __name__ == "__main__":
    sys.exit(main())
