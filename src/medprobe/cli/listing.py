"""`medprobe datasets`, `medprobe encoders`, `medprobe probes`: what this installation knows, and what is available offline."""

from medprobe.cli.args import MEDMNIST_SIZES


def add_commands(commands):
    datasets = commands.add_parser("datasets", help="list MedMNIST datasets and which are present locally")
    datasets.set_defaults(func=cmd_datasets)
    datasets.add_argument("--data-dir")
    datasets.add_argument("--size", type=int, default=28, choices=MEDMNIST_SIZES)
    encoders = commands.add_parser("encoders", help="list registered encoders with status, dim and licence")
    encoders.set_defaults(func=cmd_encoders)
    probes = commands.add_parser("probes", help="list the probes and the hyper-parameter grid each searches")
    probes.set_defaults(func=cmd_probes)


def cmd_datasets(args):
    from medprobe.data.medmnist import medmnist_search_dirs, medmnist_table

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


def cmd_probes(args):
    from medprobe.probes.fit import DESCRIPTIONS, GRIDS

    print(f"{'name':<10}{'searches':<36}what it is")
    for name, grid in GRIDS.items():
        (param, values), = grid.items()
        print(f"{name:<10}{param + ' ' + ', '.join(f'{v:g}' for v in values):<36}{DESCRIPTIONS[name]}")
    print(f"{'zeroshot':<10}{'nothing':<36}CLIP text prompts per class (--prompts FILE), no training; CLIP-style encoders only")
