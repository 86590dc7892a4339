"""`medprobe baseline`: ResNet-18 trained from scratch with the MedMNIST v2 protocol, its cost measured here."""

from medprobe.cli.args import add_data_args, add_n_boot, data_spec
from medprobe.core import defaults


def add_commands(commands):
    parser = commands.add_parser("baseline", help="train ResNet-18 from scratch (MedMNIST v2 protocol) and measure its cost")
    parser.set_defaults(func=cmd_baseline)
    add_data_args(parser, size=False)  # MedMNIST's 224 px models saw the 28 px images upsampled, so the 28 px file is read
    parser.add_argument("--size", type=int, default=28, choices=(28, 224), help="network input size (224 = 28 px upsampled)")
    # None: the protocol's value (workflows.baseline.PROTOCOL: 100 epochs, batch 128, lr 1e-3)
    parser.add_argument("--epochs", type=int, help="epochs (protocol: 100; fewer is labelled capped)")
    parser.add_argument("--max-minutes", type=float, help="wall-clock cap; training stops at the last epoch that fits")
    parser.add_argument("--batch-size", type=int, help="protocol: 128")
    parser.add_argument("--lr", type=float, help="protocol: 1e-3")
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    add_n_boot(parser)
    parser.add_argument("--out", default="medprobe-baseline", help="results folder (default ./medprobe-baseline)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_baseline(args):
    import signal

    from medprobe.reporting.results import format_table
    from medprobe.workflows.baseline import TrainingConfig, train_baseline

    def stop(signum, frame):
        raise KeyboardInterrupt

    # `kill PID` of a background run ends training early but still scores and saves the best checkpoint.
    signal.signal(signal.SIGTERM, stop)
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    config = TrainingConfig(size=args.size, max_minutes=args.max_minutes, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    result = train_baseline(data_spec(args, size=28), config, out=args.out, n_boot=args.n_boot, progress=not args.quiet)
    training, timings = result.training, result.timings
    print(f"{result.title} · {training['epochs_done']} epochs" + (f" (CAPPED: {training['capped_reason']})" if training["capped"] else ""))
    print(format_table(result.metrics["test"]))
    print(f"training {timings['train_s']:.0f} s wall, {timings['train_cpu_s']:.0f} CPU s; results in {args.out}/")
