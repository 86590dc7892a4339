"""`medprobe embed`: only compute (and cache) the embeddings, locally or on Ray."""

from medprobe.cli.args import add_data_args, add_encoder_args, data_spec, embed_options


def add_commands(commands):
    embed = commands.add_parser("embed", help="only compute (and cache) the embeddings")
    embed.set_defaults(func=cmd_embed)
    add_data_args(embed, on_error_records="lists each on the terminal")
    add_encoder_args(embed)
    embed.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="embed on Ray: alone, a local Ray started for the job; with ADDRESS (auto, ray://head:10001), that cluster",
    )
    embed.add_argument("--ray-actors", type=int, help="encoder actors on Ray (default: one per CPU of the cluster)")


def cmd_embed(args):
    from medprobe.embedding.fusion import check_spec, embed_spec
    from medprobe.embedding.ray import embed_on_ray

    options = embed_options(args)
    check_spec(options.encoder)
    data, _ = data_spec(args).load()
    if args.ray:
        result = embed_on_ray(data, options, address=args.ray, concurrency=args.ray_actors)
    else:
        result = embed_spec(data, options).embeddings
    print(f"{len(data)} images -> {result.vectors.shape[1]}-d in {result.seconds:.1f} s ({'cache hit' if result.from_cache else 'computed'})")
    if result.path:
        print(f"cache: {result.path}")
