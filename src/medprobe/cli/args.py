"""The flag groups commands share, and the one place each group becomes its options object."""

from medprobe.data.leakage import DUPLICATES
from medprobe.data.scan import ON_ERROR
from medprobe.encoders.runtimes import RUNTIMES

MEDMNIST_SIZES = (28, 64, 128, 224)


def add_data_args(parser, on_error_records="records each in results.json", size=True):
    parser.add_argument("--dataset", required=True, help="MedMNIST name, .npz file, image folder or CSV manifest")
    parser.add_argument("--data-dir", help="folder holding MedMNIST npz files (else $MEDPROBE_DATA, else the user cache)")
    if size:
        parser.add_argument("--size", type=int, default=28, choices=MEDMNIST_SIZES, help="MedMNIST image size")
    add_on_error(parser, on_error_records)
    parser.add_argument("--metadata", metavar="CSV", help="metadata table joined on each image's file name (e.g. HAM10000's metadata.csv)")
    parser.add_argument("--metadata-key", metavar="COLUMN", help="the metadata column holding the file name without extension (default image_id, else the first column)")
    parser.add_argument("--group", metavar="COLUMN", help="patient/lesion/study column: its images never straddle a split made here, and straddling given splits is reported")
    parser.add_argument("--resplit", action="store_true", help="ignore the dataset's own splits and draw train/val/test by --group")
    parser.add_argument(
        "--duplicates", choices=DUPLICATES, default="drop",
        help="identical images: 'drop' keeps one copy (train first) and every copy of an image with two labels is dropped (default); "
        "'refuse' stops; 'keep' keeps them (scores may be inflated)",
    )


def add_on_error(parser, records):
    parser.add_argument(
        "--on-error", choices=ON_ERROR, default="fail",
        help=f"unreadable images: 'fail' lists every one and stops before any work (default); 'skip' leaves them out and {records}",
    )


def add_encoder_args(parser, choose_encoder=True):
    if choose_encoder:
        parser.add_argument(
            "--encoder", default="efficientnet_lite0",
            help="registered encoder name (see `medprobe encoders`); a+b concatenates several; clip_*@pre: features before the projection",
        )
    parser.add_argument("--weights", help="local weights file or model folder, instead of the default source")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; cuda without a usable GPU is an error")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="auto",
        help="auto (default): fp32 via ONNX Runtime for large jobs, else PyTorch; torch, onnx, openvino: fp32; "
             "openvino-bf16, bf16, int8, openvino-int8: faster, approximate (opt-in; own cache entries)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    add_cache_args(parser)


def add_cache_args(parser):
    parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_probe_args(parser, probes="logreg, svm, knn, or zeroshot (CLIP text prompts, no training; needs --prompts)"):
    parser.add_argument("--probe", default="logreg", help=f"{probes}; see `medprobe probes`")
    parser.add_argument("--class-weight", choices=("balanced",), help="reweight classes inversely to their frequency (logreg, svm)")
    parser.add_argument("--seed", type=int, default=0)


def data_spec(args, size=None):
    from medprobe.data.datasets import DataSpec

    return DataSpec(args.dataset, args.data_dir, size or args.size, args.on_error, args.metadata, args.metadata_key, args.group,
                    args.resplit, args.duplicates)


def embed_options(args):
    """The EmbedOptions of a parsed command line; flags a command lacks keep their defaults."""
    from medprobe.embedding.options import EmbedOptions

    given = {
        "encoder": getattr(args, "encoder", None),
        "weights": getattr(args, "weights", None),
        "device": getattr(args, "device", None),
        "runtime": getattr(args, "runtime", None),
        "batch_size": getattr(args, "batch_size", None),
        "cache_dir": getattr(args, "cache_dir", None),
        "use_cache": not getattr(args, "no_cache", False),
        "progress": not getattr(args, "quiet", False),
    }
    return EmbedOptions(**{k: v for k, v in given.items() if v is not None})


def probe_spec(args):
    from medprobe.probes.spec import ProbeSpec

    return ProbeSpec(args.probe, args.class_weight, getattr(args, "prompts", None), args.seed)
