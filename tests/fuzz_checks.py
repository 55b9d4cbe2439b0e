"""Merges and comparisons for the fuzz tests: a CLI merge on a chosen engine, and a merge's
tensors against a float32 reference's within rounding, with the float64 result as arbiter
where they differ by more."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fuzz_configs import to_yaml
from helpers import describe, run_cli
from test_mergekit_compat import load_folder

from mergefast import execute, host
from mergefast.host import parts
from mergefast.io import mapped

NAMES_THE_INPUTS = {"README.md", "mergekit_config.yml"}  # output files that name the input models


def merge_on(config_path: Path, out: Path, engine: str, options: tuple[str, ...] = ()):
    """One CLI merge on `engine`: "torch", or the torch-free engine with its tensors "read",
    "mapped" (every whole tensor) or "cut" into parts of 700 elements; (exit code, folder
    bytes by file name or the error lines)."""
    with pytest.MonkeyPatch.context() as m:
        ran = []

        def choose(plan, options):
            ran.append(engine != "torch" and host.refusal(plan, options) is None)
            return ran[-1]

        m.setattr(execute, "torch_free", choose)
        if engine == "mapped":
            m.setattr(mapped, "MAP_MIN_BYTES", 1)
        if engine == "cut":
            m.setattr(parts, "PART_ELEMENTS", 700)
        result = run_cli("yaml", config_path, out, "--quiet", *options)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{engine}: {describe(result)}")
    if result.exit_code != 0:
        return result.exit_code, [line for line in result.stderr.splitlines() if "error" in line]
    return 0, {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def float64_family(family: dict[str, Path]) -> dict[str, Path]:
    """`family`'s folders copied, once, with every floating tensor in float64: into a folder
    beside the family's (its name + "-float64")."""
    from safetensors.torch import load_file, save_file

    copies = {}
    for name, folder in family.items():
        copies[name] = copy = folder.parent.with_name(folder.parent.name + "-float64") / name
        if not copy.exists():
            shutil.copytree(folder, copy)
            for file in copy.glob("*.safetensors"):
                tensors = load_file(file)
                save_file({k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}, file)
    return copies


def float64_merge(config: dict, family: dict[str, Path], root: Path) -> dict[str, torch.Tensor]:
    """The merge of `config` on the float64 references, from float64 copies of `family`."""
    path = root / "float64.yml"
    path.write_text(to_yaml({**config, "dtype": "float64"}, float64_family(family)))
    result = run_cli("yaml", path, root / "float64", "--quiet", env={"MERGEFAST_BACKEND": "torch"})
    assert result.exit_code == 0, describe(result)
    return load_folder(root / "float64")


def assert_near(key: str, got: torch.Tensor, ref: torch.Tensor, exact, flips: int) -> None:
    """`got` within rounding of the float32 reference `ref` (but `flips` elements), or no
    farther than it from the float64 result (`exact()`, computed when needed): near a
    method's ill-conditioned points (Model Stock's t on short rows of nearly opposite task
    vectors) the kernels' float64 sums are the closer (docs/methods.md)."""
    scale = float(ref.abs().nan_to_num(0, 0, 0).max()) or 1.0
    off = ~torch.isclose(got, ref, rtol=1e-5, atol=1e-6 * scale, equal_nan=True)
    if int(off.sum()) <= flips:
        return
    truth = exact()[key][off]
    error, reference_error = (got[off].double() - truth).abs(), (ref[off].double() - truth).abs()
    farther = error > reference_error * 1.01 + 1e-6 * scale
    assert int(farther.sum()) <= flips, (key, int(farther.sum()), float(error.max()), float(reference_error.max()))
