"""`medprobe embed`: only compute (and cache) the embeddings, locally or on Ray."""

from medprobe.cli.args import add_data_args, add_encoder_args, data_spec, embed_options


def add_commands(commands):
    embed = commands.add_parser("embed", help="only compute (and cache) the embeddings")
    embed.set_defaults(func=cmd_embed)
    add_data_args(embed, on_error_records="lists each on the terminal")
    add_encoder_args(embed)  # with --ray and --ray-actors


def cmd_embed(args):
    from medprobe.data.datasets import load_dataset
    from medprobe.embedding.fusion import check_spec, embed_spec

    options = embed_options(args)
    check_spec(options.encoder)
    # On Ray the driver only lists the dataset: the workers read, hash and decode each image (an unreadable one stops
    # the job with its name); locally the pre-scan reads them first, to list every unreadable image at once.
    data = load_dataset(args.dataset, args.data_dir, args.size) if options.ray else data_spec(args).load()[0]
    result = embed_spec(data, options).embeddings
    ray = result.cost.get("ray")
    started = f"; Ray start-up {ray['start_s']:.1f} s, {ray['actors']} actors x {ray['cpus_per_actor']} CPUs" if ray else ""
    print(f"{len(data)} images -> {result.vectors.shape[1]}-d in {result.seconds:.1f} s ({'cache hit' if result.from_cache else 'computed'}{started})")
    if result.path:
        print(f"cache: {result.path}")
