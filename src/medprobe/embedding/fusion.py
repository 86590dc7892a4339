"""Embedding with one encoder or a fusion of several: `efficientnet_lite0+efficientnet_lite2`.

A fusion embeds with every part separately -- each part keeps its own transform and its own
cache entry, so `a`, `b` and `a+b` share work -- then concatenates the vectors in the order
named. Probes scale features per column, so parts of different magnitude need no rescaling here.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from medprobe.core.errors import EncoderError
from medprobe.embedding.embed import Embeddings, embed
from medprobe.embedding.ray import embed_parts_on_ray, read_on_cluster
from medprobe.encoders import create_encoder, get_config

FUSE = "+"
CHOOSE = "|"  # 'a|b': embed with each and let the probe's selection protocol choose (never test)


def split_choices(spec):
    """'a@stages|a@stages,pad' -> ['a@stages', 'a@stages,pad']; a spec without '|' -> [spec].

    >>> split_choices("efficientnet_lite0@stages|efficientnet_lite0@stages,pad")
    ['efficientnet_lite0@stages', 'efficientnet_lite0@stages,pad']
    """
    choices = [part.strip() for part in str(spec).split(CHOOSE)]
    if not all(choices) or len(set(choices)) != len(choices):
        raise EncoderError(f"--encoder {spec!r}: an empty or repeated choice; write distinct encoders joined by '|', "
                           f"e.g. efficientnet_lite0@stages|efficientnet_lite0@stages,pad")
    return choices


def split_spec(spec):
    """'a+b' -> ['a', 'b']; a single name -> [name].

    >>> split_spec("efficientnet_lite0+efficientnet_lite2")
    ['efficientnet_lite0', 'efficientnet_lite2']
    """
    names = [part.strip() for part in str(spec).split(FUSE)]
    if not all(names):
        raise EncoderError(f"--encoder {spec!r}: empty part; write encoders joined by '+', e.g. efficientnet_lite0+efficientnet_lite2")
    if len(set(names)) != len(names):
        raise EncoderError(f"--encoder {spec!r}: an encoder appears twice; each part of a fusion must differ")
    return names


def check_spec(spec):
    """Every part's name is known; call before any work, so a typo never costs an embedding pass."""
    for choice in split_choices(spec):
        for name in split_spec(choice):
            get_config(name)


@dataclass
class Encoded:
    """What one embedding job produced, ready for the probe and for results.json."""

    embeddings: Embeddings  # vectors of all parts side by side
    encoders: list
    transforms: list
    record: dict  # results["encoder"]
    preprocessing: dict  # results["preprocessing"]

    def backends(self):
        """What actually ran for each part (ONNX Runtime or eager, the exactness guard's cosine)."""
        return [encoder.runtime_info() for encoder in self.encoders]


def embed_spec(dataset, options, check=None):
    """Embed `dataset` with the encoder (or the '+'-joined fusion) named in `options` (an EmbedOptions).

    `check(encoder, transform)`, when given, sees each part before it embeds anything: a saved model's check_encoder
    refuses another encoder and fixes an int8 runtime's calibration.

    >>> encoded = embed_spec(load_dataset("retinamnist"), EmbedOptions("efficientnet_lite0+efficientnet_lite2"))
    >>> encoded.embeddings.vectors.shape
    (1600, 2560)
    """
    spec = options.encoder
    names = split_spec(spec)
    if options.weights and len(names) > 1:
        raise EncoderError(
            "--weights names one model, but the encoder is a fusion; put each part's weights in its models folder "
            "($MEDPROBE_MODELS/<encoder>/) instead"
        )
    encoders, transforms, parts = [], [], []
    for name in names:
        encoder, transform = create_encoder(name, weights=options.weights, device=options.device, runtime=options.runtime)
        if check is not None:
            check(encoder, transform)
        encoders.append(encoder)
        transforms.append(transform)
    if options.ray is not None:  # every part in one pass over the images, on the cluster
        parts = embed_parts_on_ray(dataset, list(zip(encoders, transforms)), options)
    else:
        parts = [embed(dataset, encoder, transform, options) for encoder, transform in zip(encoders, transforms)]
    if len(names) == 1:
        record = {"name": spec, "config": encoders[0].config.to_dict(), "runtime": encoders[0].runtime}
        return Encoded(parts[0], encoders, transforms, record, transforms[0].policy)
    return Encoded(_fuse(parts), encoders, transforms, _record(spec, names, encoders, parts), {n: t.policy for n, t in zip(names, transforms)})


def _fuse(parts):
    # The fused key is derived from the part keys, so it changes whenever any part's input or config does.
    key = hashlib.sha256("+".join(p.key for p in parts).encode()).hexdigest()
    return Embeddings(
        vectors=np.concatenate([p.vectors for p in parts], axis=1),
        key=key,
        path=", ".join(p.path for p in parts if p.path),
        from_cache=all(p.from_cache for p in parts),
        seconds=sum(p.seconds for p in parts),
        description={"fusion": "concatenate", "parts": [p.description for p in parts]},
        cost=_fused_cost([p.cost for p in parts]),
    )


def _fused_cost(costs):
    """Every part's images were embedded once by its own encoder: the fused cost is the sum of the parts'."""
    def total(name):
        return sum(c[name] for c in costs) if all(c.get(name) is not None for c in costs) else None

    return {
        "wall_s": total("wall_s"),
        "cpu_s": total("cpu_s"),
        "n_images": max(c.get("n_images", 0) for c in costs),
        "computed_now": sum(c.get("computed_now", 0) for c in costs),
        "from_store": sum(c.get("from_store", 0) for c in costs),
        "measured_in": "; ".join(sorted({c.get("measured_in", "") for c in costs})),
    }


def _record(spec, names, encoders, parts):
    dims = [int(p.vectors.shape[1]) for p in parts]
    return {
        "name": spec,
        "fusion": {"method": "concatenate", "order": names, "dims": dims, "embed_dim": sum(dims)},
        "parts": [
            {
                "name": name,
                "config": encoder.config.to_dict(),
                "runtime": encoder.runtime,
                "cache": {"key": part.key, "path": part.path, "hit": part.from_cache},
            }
            for name, encoder, part in zip(names, encoders, parts)
        ],
    }


def scan_for(data_spec, options):
    """`data_spec.scan()`, by the Ray job that embeds the images when the command runs on a cluster (with a store to
    keep its work in): this process then lists the dataset and never reads an image. Every encoder of the run (each
    choice's parts) is embedded in that one pass."""
    if options.ray is None or not options.use_cache:
        return data_spec.scan()
    encoders = list(dict.fromkeys(name for choice in split_choices(options.encoder) for name in split_spec(choice)))
    return data_spec.scan(read=read_on_cluster(options, encoders))
