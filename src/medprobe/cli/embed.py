"""`medprobe embed`: only compute (and cache) the embeddings, locally or on Ray."""

from medprobe.cli.args import add_data_args, add_encoder_args, data_spec, embed_options


def add_commands(commands):
    embed = commands.add_parser("embed", help="only compute (and cache) the embeddings")
    embed.set_defaults(func=cmd_embed)
    add_data_args(embed, on_error_records="lists each on the terminal")
    add_encoder_args(embed)  # with --ray and --ray-actors


def cmd_embed(args):
    from medprobe.embedding.fusion import check_spec, embed_spec, scan_for

    options = embed_options(args)
    check_spec(options.encoder)
    # On Ray the driver only lists the dataset: the workers read, hash, decode and embed each image (scan_for);
    # locally the pre-scan reads them first. Either way every unreadable image is listed at once. Every row is
    # embedded whatever its split, so none is drawn: a folder too small to split embeds, and scikit-learn stays unloaded.
    data, scanned = scan_for(data_spec(args), options)
    result = embed_spec(data, options).embeddings
    ray = scanned.on_ray  # the workers embedded while they read: their pass is the embedding
    seconds, computed = (scanned.seconds, ray["embedded_now"] > 0) if ray else (result.seconds, not result.from_cache)
    started = f"; Ray start-up {ray['start_s']:.1f} s, {ray['actors']} actors x {ray['cpus_per_actor']} CPUs" if ray else ""
    print(f"{len(data)} images -> {result.vectors.shape[1]}-d in {seconds:.1f} s ({'computed' if computed else 'cache hit'}{started})")
    if result.path:
        print(f"cache: {result.path}")
