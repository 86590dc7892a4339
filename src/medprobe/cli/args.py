"""The flag groups commands share, and the one place each group becomes its options object."""

from medprobe.core import defaults
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
            "--encoder", default=defaults.ENCODER,
            help=f"registered encoder name (see `medprobe encoders`), default {defaults.ENCODER}; name@recipe,recipe: feature recipes "
            "(stages, ms, up, tta, tta8, pad; ViTs: tokens; clip_*@pre: before the projection); a+b concatenates several; "
            "a|b embeds with each and lets the probe's selection choose",
        )
    parser.add_argument("--weights", help="local weights file or model folder, instead of the default source")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; cuda without a usable GPU is an error")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="auto",
        help="auto (default): fp32 via ONNX Runtime for large jobs, else PyTorch; torch, onnx, openvino: fp32; "
             "openvino-bf16, bf16, int8, openvino-int8: faster, approximate (opt-in; own cache entries); "
             "fast: openvino-int8 on OpenCV-resized images, the fastest (pip install 'medprobe[fast]')",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    add_cache_args(parser)


def add_cache_args(parser):
    parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="embed what the store lacks on Ray (the rest runs here): alone, a local Ray started for the job; "
             "with ADDRESS (auto, ray://head:10001), that cluster",
    )
    parser.add_argument("--ray-actors", type=int, help="encoder actors on Ray (default: from the cluster's CPUs)")


def add_probe_args(parser, probes="logreg, svm, knn, pca_logreg, lda, ridge, or zeroshot (CLIP text prompts, no training; needs --prompts)"):
    parser.add_argument("--probe", default="logreg", help=f"{probes}; see `medprobe probes`")
    parser.add_argument("--class-weight", choices=("balanced",), help="reweight classes inversely to their frequency (logreg, svm)")
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    parser.add_argument(
        "--selection", choices=("cv", "val"), default=defaults.SELECTION,
        help="how the probe's hyper-parameter is chosen: 'cv' (default: repeated stratified CV over train+val, one-standard-error "
        "rule, fitted on train+val; val metrics are then not held out) or 'val' (MedMNIST's rule: best val AUC, fitted on train; "
        "use it to compare with MedMNIST's published rows)",
    )
    parser.add_argument(
        "--column-groups", choices=("all", "choose"), default=defaults.COLUMN_GROUPS,
        help="'all' (default): the probe sees every column of the recipe; 'choose': the selection also chooses among the recipe's "
        "column groups (all, avg, max, heads, avg_head) by the same score, at no embedding cost (logreg)",
    )


def add_n_boot(parser, what="the CIs"):
    parser.add_argument("--n-boot", type=int, default=defaults.N_BOOTSTRAP,
                        help=f"bootstrap resamples for {what} (default {defaults.N_BOOTSTRAP})")


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
        "ray": getattr(args, "ray", None),
        "ray_actors": getattr(args, "ray_actors", None),
    }
    return EmbedOptions(**{k: v for k, v in given.items() if v is not None})


def probe_spec(args):
    from medprobe.probes.spec import ProbeSpec

    return ProbeSpec(args.probe, args.class_weight, getattr(args, "prompts", None), args.seed, getattr(args, "selection", defaults.SELECTION),
                     getattr(args, "column_groups", defaults.COLUMN_GROUPS))


def add_study_args(parser, chooses=True):
    """Operating points, calibration and subgroups; `chooses` is False where the model's saved choices are used (evaluate)."""
    if chooses:
        parser.add_argument(
            "--operating-point", action="append", metavar="RULE",
            help="threshold chosen on held-out scores (out-of-fold over train+val with --selection cv, val with --selection val), "
                 "reported on test with CIs: youden (default), sensitivity=X, specificity=X; repeatable",
        )
        parser.add_argument(
            "--calibrate", default="none", choices=("none", "auto", "temperature", "platt", "isotonic"),
            help="post-hoc calibrator fitted on the same held-out scores: temperature (multi-class), platt or isotonic (binary), auto picks; "
            "ECE and Brier are reported either way (default none)",
        )
        parser.add_argument("--positive", metavar="CLASS",
                            help="binary: the class whose sensitivity the operating points mean (default the last class, e.g. --positive mel)")
    parser.add_argument("--subgroup", action="append", default=[], metavar="COLUMN",
                        help="metadata column (sex, age, site...) to report AUC and operating points per value; repeatable")
    parser.add_argument("--age-bands", default="0,40,60,80", metavar="EDGES",
                        help="lower edges of the age bands for the --age-column subgroup (default 0,40,60,80: 0-39, 40-59, 60-79, 80+)")
    parser.add_argument("--age-column", default="age", metavar="COLUMN", help="the metadata column banded by --age-bands (default age)")


def study_options(args):
    """The StudyOptions of a parsed command line (evaluate has no rules or calibrator of its own: the model's are used)."""
    from medprobe.evaluation.study import StudyOptions
    from medprobe.evaluation.subgroups import SubgroupOptions

    subgroups = SubgroupOptions(tuple(args.subgroup), args.age_bands, args.age_column)
    rules = tuple(getattr(args, "operating_point", None) or ("youden",))
    return StudyOptions(rules, getattr(args, "calibrate", "none"), subgroups, getattr(args, "positive", None))
