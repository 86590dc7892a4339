"""`medprobe cache`: what the embedding store holds, whether it is intact, and removing what is no longer wanted."""

from medprobe.core.errors import CacheError, MedprobeError


def add_commands(commands):
    parser = commands.add_parser("cache", help="list, verify or prune the embedding store")
    parser.set_defaults(func=cmd_cache)
    parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    parser.add_argument("--verify", action="store_true", help="check every file against the checksum in its name; damaged files are removed")
    parser.add_argument("--prune", action="store_true", help="delete whole stores, chosen by --older-than and/or --encoder")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: stores last written more than DAYS ago")
    parser.add_argument("--encoder", help="with --prune: stores of this encoder")


def cmd_cache(args):
    from medprobe.core.locations import cache_root
    from medprobe.embedding.store import list_stores, prune, verify_store

    root = cache_root(args.cache_dir)
    if isinstance(root, str):
        raise MedprobeError(f"medprobe cache lists, verifies and prunes stores on a local disk, not {root}: list a bucket's stores "
                            "with its own tools (aws s3 ls --recursive), or mount it; embed and run read and write it as they are")
    if args.prune:
        if args.older_than is None and args.encoder is None:
            raise MedprobeError("--prune needs --older-than DAYS and/or --encoder NAME (nothing is deleted without one)")
        removed, failed = prune(root, args.older_than, args.encoder)
        print(f"removed {len(removed)} store(s), {sum(r['images'] for r in removed):,} embeddings, "
              f"{sum(r['bytes'] for r in removed) / 1e6:.1f} MB")
        if failed:
            record, reason = failed[0]
            raise CacheError(f"could not delete {len(failed)} store(s), the first {record['path']} ({reason}); "
                             "a read-only store is pruned by its owner, or with write permission on its folder")
        return
    stores = list_stores(root)
    print(f"{root}: {len(stores)} store(s)")
    print(f"{'encoder':<24}{'precision':<10}{'images':>10}{'files':>7}{'MB':>9}  folder")
    for record in stores:
        note = f"  ({record['note']})" if record["note"] else ""
        print(f"{record['encoder']:<24}{record['runtime']:<10}{record['images']:>10,}{record['files']:>7}{record['bytes'] / 1e6:>9.1f}  {record['path']}{note}")
    if args.verify:
        bad_total, kept = 0, []
        for record in stores:
            good, bad = verify_store(record["path"])
            bad_total += len(bad)
            for path, reason in bad:
                print(f"  damaged: {path}: {reason}")
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:  # a read-only store: reads leave the file out, but it cannot be removed here
                    kept.append((path, e.strerror or str(e)))
        print(f"verified {len(stores)} store(s): {bad_total - len(kept)} damaged file(s) removed (their images are embedded again when next needed)")
        if kept:
            path, reason = kept[0]
            raise CacheError(f"{len(kept)} damaged file(s) could not be removed, the first {path} ({reason}); runs leave them out, "
                             "and the store's owner can remove them with `medprobe cache --verify`")
