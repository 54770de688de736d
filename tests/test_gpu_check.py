"""benchmarks/gpu_check.sh: the rows the speed issue names, in order, and a time budget the script keeps.

The script's measurements need a CUDA machine; here it runs with stand-ins for python3 and nvidia-smi (a stand-in
sleeps instead of measuring), which is enough to check its schedule: the row that runs, the row cut off at the
budget, the rows skipped, and the summary.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str, path_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OUT": str(tmp_path / "out"), **env}
    if path_dir is not None:
        full_env["PATH"] = f"{path_dir}:{full_env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120)


def _plan_rows(stdout: str) -> list[tuple[str, int, int, str]]:
    """(part, starts at s, needs s, command) for each planned row."""
    rows = re.findall(r"^plan: part (\S+) at (\d+) s, needs (\d+) s, at most \d+ s: (.*)$", stdout, re.M)
    return [(part, int(start), int(needs), command) for part, start, needs, command in rows]


def test_default_rows_are_the_issues_list_in_order_of_importance(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = _plan_rows(_run(tmp_path, str(photos), PLAN="1", BUDGET_S="100000").stdout)
    assert [part for part, *_ in rows] == ["B", "loader", "loader", "L", "H"]
    b, cpu_loader, gpu_loader, large, huge = (command for *_, command in rows)
    # ViT-B/16: openmae bf16 compiled and eager, Hugging Face and the official-style step, in one run
    assert "--preset mae_vit_base_patch16" in b and "--compile --with-eager" in b and "--precision bf16" in b
    assert "--no-hf" not in b and "--no-reference" not in b
    for command, preset in ((large, "mae_vit_large_patch16"), (huge, "mae_vit_huge_patch14")):
        assert f"--preset {preset}" in command and "--compile blocks --with-eager" in command
        assert "--no-reference" not in command  # the official-style step beside it, for the ratio
    assert "--device-augment" not in cpu_loader and f"--data {photos}" in cpu_loader and "--workers 15" in cpu_loader
    assert "--device-augment --device cuda" in gpu_loader and "--workers 4 15" in gpu_loader
    # memory per image without and with activation checkpointing: ViT-L/16's run has both rows
    assert "--with-checkpointing" in large and "--grad-checkpointing" not in large


def test_default_schedule_fits_five_minutes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    result = _run(tmp_path, str(photos), PLAN="1")
    rows = _plan_rows(result.stdout)
    assert len(rows) == 5 and "skipped" not in result.stdout  # every default row is expected to run
    part, start, needs, _ = rows[-1]
    assert start + needs <= 290
    assert (tmp_path / "out" / "timing.log").read_text().rstrip().endswith("(budget 290 s)")


def test_the_documented_second_call_fits_its_budget(tmp_path):
    """docs/benchmarks.md's second call: L and H compiled whole, CUDA graphs, the profile."""
    result = _run(tmp_path, PLAN="1", PARTS="whole graphs prof", BUDGET_S="560")
    rows = _plan_rows(result.stdout)
    assert [part for part, *_ in rows] == ["whole"] * 2 + ["graphs"] * 2 + ["prof"] * 2
    assert "skipped" not in result.stdout and rows[-1][1] + rows[-1][2] <= 560
    whole_l, whole_h = rows[0][3], rows[1][3]
    assert "--compile --no-hf" in whole_l and "--preset mae_vit_large_patch16" in whole_l
    assert "--compile --no-hf" in whole_h and "--preset mae_vit_huge_patch14" in whole_h
    assert all("--compile-mode reduce-overhead" in command for *_, command in rows[2:4])


def test_rows_without_a_photo_folder_are_reported_skipped(tmp_path):
    result = _run(tmp_path, PLAN="1", PARTS="loader B")
    assert [part for part, *_ in _plan_rows(result.stdout)] == ["B"]
    assert result.stdout.count("no photo folder given") == 1


def test_a_row_is_cut_at_the_budget_and_the_next_skipped(tmp_path):
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "python3").write_text(  # install and environment lines at once; every measurement sleeps
        '#!/bin/bash\ncase "$1" in -m|-c) exit 0;; esac\necho "stand-in $*"\nexec sleep 60\n')
    (stand_ins / "nvidia-smi").write_text("#!/bin/bash\necho 'name, memory.total'\n")
    for f in stand_ins.iterdir():
        f.chmod(0o755)
    photos = tmp_path / "photos"
    photos.mkdir()
    start = time.monotonic()
    result = _run(tmp_path, str(photos), path_dir=stand_ins, PARTS="loader", BUDGET_S="27")
    wall = time.monotonic() - start
    assert result.returncode == 0
    assert wall < 27, wall  # the 60 s row was stopped inside the budget
    timing = (tmp_path / "out" / "timing.log").read_text()
    # the first loader row needs 20 s and got what was left (27 - 5 for the summary); the second one never started
    assert re.search(r"## timed out after 2[12] s: part loader: python3 benchmarks/loader.py .*--workers 15$", timing, re.M)
    assert re.search(r"## skipped: -?\d+ s of the budget left, the row needs 15: part loader: .*--device-augment", timing)
    assert "stand-in benchmarks/loader.py" in (tmp_path / "out" / "loader.log").read_text()
    assert "== summary ==" in result.stdout and "timed out after" in result.stdout


def test_the_bands_part_makes_tiles_then_times_both_array_paths(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = _plan_rows(_run(tmp_path, str(photos), PLAN="1", PARTS="bands").stdout)
    assert [part for part, *_ in rows] == ["bands"] * 3
    make, cpu, device = (command for *_, command in rows)
    assert f"make_band_tiles.py --data {photos}" in make and "--bands 13" in make
    tiles = re.search(r"--out (\S+)", make).group(1)
    assert not tiles.startswith(str(tmp_path / "out"))  # 209 MB of tiles must not come back with the results
    for command in (cpu, device):
        assert f"--data {tiles} --format array --bands 13" in command and "--workers 15" in command
    assert "--device-augment" not in cpu and "--device-augment --device cuda" in device


PARSE_ONLY = """
import argparse, json, os, runpy, shlex, sys
parsed = argparse.ArgumentParser.parse_args
class Parsed(Exception):
    'The arguments parsed: stop before the script measures anything.'
def parse_and_stop(self, *args, **kwargs):
    parsed(self, *args, **kwargs)  # a bad argument exits here with argparse's status 2
    raise Parsed
argparse.ArgumentParser.parse_args = parse_and_stop
results = []
for command in json.load(sys.stdin):
    words = shlex.split(command)
    sys.argv = words[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(words[1]))  # as `python3 script.py` sets it
    try:
        runpy.run_path(words[1], run_name="__main__")
        results.append("ran without parsing")
    except Parsed:
        results.append("parsed")
    except SystemExit as err:
        results.append(f"exit {err.code}")
print(json.dumps(results))
"""


def test_every_rows_arguments_are_ones_its_script_accepts(tmp_path):
    """Each python row of every part, as the script plans it, parsed by its own script's argument parser (and
    nothing run): a renamed or removed option fails here instead of on the GPU machine, whose time is scarce."""
    import json
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    parts = "B loader L H whole graphs big prof profl loadab bands codec knn dist"
    rows = _plan_rows(_run(tmp_path, str(photos), PLAN="1", PARTS=parts, BUDGET_S="100000").stdout)
    assert {part for part, *_ in rows} == set(parts.split())
    commands = [command for *_, command in rows]
    assert all(command.startswith("python3 benchmarks/") for command in commands)
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps(commands), capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.splitlines()[-1])
    assert [(c, o) for c, o in zip(commands, outcomes, strict=True) if o != "parsed"] == [], result.stderr[-3000:]
