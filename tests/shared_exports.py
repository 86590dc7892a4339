"""The session's exported graphs, shared by every test (conftest's `exported_once`) and by the workers of its local Ray
(conftest's `local_ray`). A module of its own: a Ray worker imports this, not conftest and pytest."""

import os
import shutil
from pathlib import Path

KEPT = "MEDPROBE_TEST_KEPT_EXPORTS"  # the folder of kept copies, for the Ray workers


def linked_to_kept(kept, path, build):
    """`path` as a link to the kept copy of its graph in the folder `kept`, which `build(target)` writes the first time."""
    from medprobe.core.files import atomic_target

    master = Path(kept) / Path(path).name
    if not master.is_file():
        build(master)  # atomic: two Ray workers may build the same graph at once
    with atomic_target(path) as partial:
        try:
            os.link(master, partial)  # no test writes into a graph, so the tests can share its bytes on disk
        except OSError:  # another filesystem
            shutil.copyfile(master, partial)
    return path


def in_ray_worker():
    """Ray's worker_process_setup_hook for `local_ray`: each encoder actor links its graph as the test process does, where
    it would export its network again (1-1.5 CPU-s with the import of onnx). test_ray_s3's two-node cluster is left to
    export in its actors."""
    from medprobe.encoders import runtimes

    kept, export = os.environ[KEPT], runtimes.export_onnx
    runtimes.export_onnx = lambda module, config, path: linked_to_kept(kept, path, lambda to: export(module, config, to))
