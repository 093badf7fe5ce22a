"""bench/liveportrait_speed.py's own logic, without LivePortrait (its source is not part of MegaLive and is not here).

The script runs as a user runs it (a subprocess; tests never import bench/). Bad input gets one line and exit code 2.
For the timing path, a toy checkout with LivePortrait's layout (src/config/models.yaml, src/modules/<network>.py) and
tiny networks that take LivePortrait's call conventions (keyword names, a dict out of the motion extractor and the
warping module, a 5-D grid_sample in the warping module) is timed beside the ``tiny`` student: the rows, the per-frame
total, the medians and the ratios are checked against the per-round times the script writes to its JSON. Times are
never asserted.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "liveportrait_speed.py"

TOY_CONFIG = """\
model_params:
  appearance_feature_extractor_params: # the F in the paper
    image_channel: 3
    reshape_channel: 4
    reshape_depth: 4
  motion_extractor_params: # the M in the paper
    num_kp: 5
    backbone: toy
  warping_module_params: # the W in the paper
    num_kp: 5
    reshape_channel: 4
    dense_motion_params:
      hidden: 8
      sizes: [8, 8]
  spade_generator_params:
    upscale: 2
"""

TOY_MODULES = {
    # F: 256² crop -> C×D×16×16 volume. `exportable=False` plants an operator ONNX has no export for.
    "appearance_feature_extractor.py": """\
import torch
from torch import nn


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, image_channel, reshape_channel, reshape_depth):
        super().__init__()
        self.shape = (reshape_channel, reshape_depth)
        self.conv = nn.Conv2d(image_channel, reshape_channel * reshape_depth, 1)

    def forward(self, x):
        v = self.conv(nn.functional.avg_pool2d(x, 16))
        v = v * torch.linalg.svdvals(v[0, 0]).sum() if EXPORT_BREAKER else v
        return v.view(x.shape[0], *self.shape, 16, 16)


EXPORT_BREAKER = {breaker}
""",
    "motion_extractor.py": """\
from torch import nn


class MotionExtractor(nn.Module):
    def __init__(self, num_kp, backbone):
        super().__init__()
        self.num_kp = num_kp
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.head = nn.Linear(8, num_kp * 3 + 1)

    def forward(self, x):
        h = self.head(self.conv(x).mean(dim=(2, 3)))
        return {"kp": h[:, :-1], "scale": h[:, -1:]}
""",
    "warping_network.py": """\
from torch import nn
import torch.nn.functional as F


class WarpingNetwork(nn.Module):
    def __init__(self, num_kp, reshape_channel, dense_motion_params):
        super().__init__()
        self.flow = nn.Conv3d(reshape_channel, 3, 1)
        self.mix = nn.Conv2d(reshape_channel * 4, 8, 1)

    def forward(self, feature_3d, kp_driving, kp_source):
        shift = (kp_driving - kp_source).mean(dim=1)[:, None, None, None, :]
        grid = self.flow(feature_3d).permute(0, 2, 3, 4, 1).tanh() + shift
        out = F.grid_sample(feature_3d, grid, align_corners=False)
        b, c, d, h, w = out.shape
        return {"out": self.mix(out.view(b, c * d, h, w)), "deformation": grid}
""",
    "spade_generator.py": """\
import torch
from torch import nn


class SPADEDecoder(nn.Module):
    def __init__(self, upscale):
        super().__init__()
        self.conv = nn.Conv2d(8, 3 * 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=16)

    def forward(self, feature):
        return torch.sigmoid(nn.functional.pixel_shuffle(self.conv(self.up(feature)), 2))
""",
}


def toy_checkout(root: Path, *, exportable: bool = True) -> Path:
    modules = root / "src" / "modules"
    modules.mkdir(parents=True)
    (modules / "__init__.py").write_text("")
    for name, text in TOY_MODULES.items():
        (modules / name).write_text(text.replace("{breaker}", str(not exportable)))
    (root / "src" / "config").mkdir()
    (root / "src" / "config" / "models.yaml").write_text(TOY_CONFIG)
    return root


def run_bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_a_folder_that_is_not_a_liveportrait_checkout_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "src" / "config").mkdir(parents=True)
    (tmp_path / "src" / "config" / "models.yaml").write_text(TOY_CONFIG)  # a config alone is not a checkout
    line = one_error_line(run_bench("--liveportrait", tmp_path))
    assert line.startswith(f"bench/liveportrait_speed.py: --liveportrait {tmp_path.resolve()} is not a LivePortrait checkout"), line
    assert "src/modules/warping_network.py" in line and "models.yaml" not in line

    line = one_error_line(run_bench("--liveportrait", tmp_path / "absent"))
    assert line.endswith(f"{tmp_path.resolve() / 'absent'}: no such folder"), line


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--frames", "0"], "need --frames ≥ 1"),
        (["--threads", "0"], "need --frames ≥ 1"),
        (["--students", "cpu256,paper9000"], "unknown preset(s) ['paper9000']"),
    ],
)
def test_bad_options_get_one_line_and_exit_2(tmp_path: Path, options: list[str], expected: str) -> None:
    assert expected in one_error_line(run_bench("--liveportrait", toy_checkout(tmp_path), *options))


def test_a_config_that_is_not_liveportraits_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    checkout = toy_checkout(tmp_path)
    (checkout / "src" / "config" / "models.yaml").write_text(TOY_CONFIG.replace("  warping_module_params:", "  warper_params:"))
    line = one_error_line(run_bench("--liveportrait", checkout))
    assert "models.yaml: not LivePortrait's model config ('warping_module_params')" in line, line

    (checkout / "src" / "config" / "models.yaml").write_text("model_params:\n  - a list, not the key: value lines it is written in\n")
    assert "not LivePortrait's model config (line 2" in one_error_line(run_bench("--liveportrait", checkout))


def test_a_checkout_without_a_networks_class_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    checkout = toy_checkout(tmp_path)
    generator = checkout / "src" / "modules" / "spade_generator.py"
    generator.write_text(generator.read_text().replace("class SPADEDecoder(", "class RenamedDecoder("))
    line = one_error_line(run_bench("--liveportrait", checkout, "--students", "tiny"))
    expected = f"bench/liveportrait_speed.py: cannot import SPADEDecoder from {checkout.resolve()}/src/modules/spade_generator.py"
    assert line.startswith(expected), line


def test_dry_run_prints_the_networks_from_the_checkouts_own_config(tmp_path: Path) -> None:
    result = run_bench("--liveportrait", toy_checkout(tmp_path), "--dry-run", "--onnx", "--students", "tiny")
    assert result.returncode == 0, result.stderr
    assert "commit unknown (not a git checkout)" in result.stdout
    # The nested mapping, the flow list and the comments of models.yaml read as YAML reads them.
    expected = {"num_kp": 5, "reshape_channel": 4, "dense_motion_params": {"hidden": 8, "sizes": [8, 8]}}
    assert f"warping_module (per frame): {json.dumps(expected)}" in result.stdout
    assert "appearance_feature_extractor (once per source)" in result.stdout
    assert "runtimes: pytorch and onnxruntime" in result.stdout


def test_a_toy_checkout_is_timed_beside_a_student_in_rounds(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    checkout = toy_checkout(tmp_path / "checkout", exportable=False)
    rounds = 3
    result = run_bench(
        "--liveportrait", checkout, "--students", "tiny,cpu256", "--frames", rounds, "--student-frames", 2, "--warmup", 1,
        "--threads", 1, "--onnx", "--json", figures_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "speed does not depend on weight values" in result.stdout
    figures = json.loads(figures_path.read_text())
    assert figures["threads"] == 1 and figures["rounds"] == rounds and figures["liveportrait_commit"] == "unknown (not a git checkout)"
    rows = {(row["network"].split(" (")[0], row["runtime"]): row for row in figures["rows"]}

    # F does not export (the planted operator): said so, and the rest runs on ONNX Runtime all the same.
    (broken,) = figures["not_exported"].items()
    assert broken[0].startswith("LivePortrait appearance feature extractor F") and "linalg_svdvals" in broken[1]
    assert broken[0] in result.stdout and ("LivePortrait appearance feature extractor F, once per source", "onnxruntime") not in rows
    once = rows[("LivePortrait appearance feature extractor F, once per source", "pytorch")]
    assert not once["per_frame"] and len(once["ms_by_round"]) == 1 and once["frames_per_s"] is None

    for runtime in ("pytorch", "onnxruntime"):
        parts = [rows[(f"LivePortrait {name}", runtime)] for name in ("motion extractor M", "warping module W", "SPADE generator G")]
        total = rows[("LivePortrait per frame", runtime)]
        assert all(len(row["ms_by_round"]) == rounds and row["per_frame"] for row in [*parts, total])
        for index in range(rounds):  # the per-frame total is M + W + G within each round
            assert total["ms_by_round"][index] == pytest.approx(sum(row["ms_by_round"][index] for row in parts))
        for row in [*parts, total, rows[("MegaLive student tiny", runtime)], rows[("MegaLive student cpu256", runtime)]]:
            assert row["ms_per_frame"] == pytest.approx(statistics.median(row["ms_by_round"]))
            assert row["frames_per_s"] == pytest.approx(1000 / row["ms_per_frame"])
            assert f"{row['ms_per_frame']:.1f}" in result.stdout

    # Each ratio is the median of the rounds' ratios; LivePortrait's total over each student row, on both runtimes.
    def by_label(label: str) -> dict[str, object]:
        name, runtime = label.rsplit(" [", 1)
        return next(row for row in figures["rows"] if row["network"] == name and row["runtime"] == runtime.rstrip("]"))

    assert len(figures["ratios"]) == 2 * 4 + 2  # 2 totals × 4 student rows, then cpu256 / tiny on each runtime
    for ratio in figures["ratios"]:
        top, bottom = by_label(ratio["numerator"])["ms_by_round"], by_label(ratio["denominator"])["ms_by_round"]
        assert ratio["ratio"] == pytest.approx(statistics.median(a / b for a, b in zip(top, bottom)))
        assert f"{ratio['numerator']} / {ratio['denominator']}: ×{ratio['ratio']:.1f}" in result.stdout
