"""The `medprobe` command line. User mistakes print one line and exit 2; nothing prints a traceback for them."""

import argparse
import logging
import sys

from medprobe.errors import MedprobeError
from medprobe.scan import add_on_error_argument, scan_images


def _add_data_args(parser):
    parser.add_argument("--dataset", required=True, help="MedMNIST name, .npz file, image folder or CSV manifest")
    parser.add_argument("--data-dir", help="folder holding MedMNIST npz files (else $MEDPROBE_DATA, else the user cache)")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="MedMNIST image size")


def _add_encoder_args(parser):
    parser.add_argument(
        "--encoder", default="efficientnet_lite0",
        help="registered encoder name (see `medprobe encoders`); a+b concatenates several; clip_*@pre: features before the projection",
    )
    parser.add_argument("--weights", help="local weights file or model folder, instead of the default source")
    parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; cuda without a usable GPU is an error")
    parser.add_argument(
        "--runtime", choices=("auto", "torch", "onnx", "bf16", "int8"),
        help="auto (default): fp32 via ONNX Runtime for large jobs, else PyTorch; torch, onnx: fp32; bf16, int8: faster, approximate (opt-in)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_ray_args(parser):
    parser.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="embed on Ray: alone, a local Ray started for the job; with ADDRESS (auto, ray://head:10001), that cluster",
    )
    parser.add_argument("--ray-actors", type=int, help="encoder actors on Ray (default: one per CPU of the cluster)")


def build_parser():
    parser = argparse.ArgumentParser(prog="medprobe", description="Training-free medical image classification with frozen embeddings.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="embed, fit a probe, and report test AUC/ACC with 95%% CIs")
    run.set_defaults(func=cmd_run)
    _add_data_args(run)
    _add_encoder_args(run)
    run.add_argument("--probe", default="logreg", help="logreg, svm, knn, or zeroshot (CLIP text prompts, no training; needs --prompts)")
    run.add_argument("--prompts", help="for --probe zeroshot: YAML or JSON file mapping each class name to a list of prompts")
    run.add_argument("--class-weight", choices=("balanced",), help="reweight classes inversely to their frequency")
    run.add_argument("--out", default="medprobe-run", help="results folder (default ./medprobe-run)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    add_on_error_argument(run)

    embed = commands.add_parser("embed", help="only compute (and cache) the embeddings")
    embed.set_defaults(func=cmd_embed)
    _add_data_args(embed)
    _add_encoder_args(embed)
    _add_ray_args(embed)
    add_on_error_argument(embed)

    datasets = commands.add_parser("datasets", help="list MedMNIST datasets and which are present locally")
    datasets.set_defaults(func=cmd_datasets)
    datasets.add_argument("--data-dir")
    datasets.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224))

    encoders = commands.add_parser("encoders", help="list registered encoders with status, dim and licence")
    encoders.set_defaults(func=cmd_encoders)

    # Further commands live beside the code they drive; each module's add_command(commands) adds its
    # subparser with set_defaults(func=...). Keep this list one line per module.
    from medprobe import baseline, bench, curve, predict, report

    bench.add_command(commands)
    baseline.add_command(commands)
    curve.add_command(commands)
    report.add_command(commands)
    predict.add_command(commands)  # fit --save, predict
    return parser


def cmd_run(args):
    from medprobe.pipeline import run
    from medprobe.results import format_table

    results = run(
        args.dataset,
        args.encoder,
        args.probe,
        out=args.out,
        data_dir=args.data_dir,
        size=args.size,
        weights=args.weights,
        class_weight=args.class_weight,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        batch_size=args.batch_size,
        device=args.device,
        runtime=args.runtime,
        seed=args.seed,
        n_boot=args.n_boot,
        progress=not args.quiet,
        prompts=args.prompts,
        on_error=args.on_error,
    )
    data = results["dataset"]
    print(f"{data['name']} ({data['task']}, test n={data['n']['test']}) · {args.encoder} · {args.probe} {results['probe']['params']}")
    print(format_table(results["metrics"]["test"]))
    print(f"embedding {results['timings']['embed_s']:.1f} s ({'cache hit' if results['cache']['hit'] else 'computed'}); results in {args.out}/")


def cmd_embed(args):
    from medprobe.datasets import load_dataset
    from medprobe.fusion import embed_spec

    data, _ = scan_images(load_dataset(args.dataset, data_dir=args.data_dir, size=args.size), args.on_error)
    options = dict(cache_dir=args.cache_dir, use_cache=not args.no_cache, batch_size=args.batch_size, progress=not args.quiet)
    if args.ray:
        from medprobe.ray_embed import embed_on_ray

        result = embed_on_ray(data, args.encoder, weights=args.weights, address=args.ray, concurrency=args.ray_actors, device=args.device, **options)
    else:
        result = embed_spec(data, args.encoder, weights=args.weights, device=args.device, runtime=args.runtime, **options).embeddings
    print(f"{len(data)} images -> {result.vectors.shape[1]}-d in {result.seconds:.1f} s ({'cache hit' if result.from_cache else 'computed'})")
    if result.path:
        print(f"cache: {result.path}")


def cmd_datasets(args):
    from medprobe.datasets import medmnist_search_dirs, medmnist_table

    table = medmnist_table()
    dirs = medmnist_search_dirs(args.data_dir)
    print(f"{'name':<16}{'task':<13}{'classes':>8}  {'licence':<13}local ({args.size} px)")
    for name, meta in table.items():
        file = meta["files"][str(args.size)]["file"]
        where = next((str(d / file) for d in dirs if (d / file).is_file()), "not found (downloads on first use)")
        print(f"{name:<16}{meta['task']:<13}{len(meta['label_names']):>8}  {meta['license']:<13}{where}")
    print("\nAlso accepted: any MedMNIST-layout .npz, an image folder (class/ or split/class/), or a CSV with path,label[,split].")


def cmd_encoders(args):
    from medprobe.encoders import encoder_status, list_encoders
    from medprobe.encoders.weights import models_root

    print(f"{'name':<24}{'dim':>6}  {'input':>5}  {'licence':<14}status")
    for name, config in list_encoders().items():
        print(f"{name:<24}{config.embed_dim:>6}  {config.input_size:>5}  {config.license:<14}{encoder_status(name)}")
    print(
        f"\nCLIP-style encoders give features after the projection; add @pre (clip_vit_b16@pre) for those before it. "
        f"Join names with + to concatenate (efficientnet_lite0+efficientnet_lite2). Offline, place weights in "
        f"{models_root()}/<name>/ or pass --weights; see the error of `medprobe embed` for the exact files."
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medprobe: %(message)s")
    try:
        args.func(args)
    except MedprobeError as e:
        print(f"medprobe: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `medprobe datasets | head`
        return 0
    except KeyboardInterrupt:
        print("medprobe: interrupted; finished cache shards are kept and the next run resumes from them", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
