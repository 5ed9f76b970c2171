"""Batch planning: inputs, mirrored names, collisions, existing outputs, stale temporaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from doubles import InterpolationPipeline, write_bad_files
from PIL import Image

from op4ksr.api import Upscaler
from op4ksr.batch.plan import BatchOptions, PlanError, WorkItem, plan_batch
from op4ksr.batch.run import process_item, remove_stale_temps, run_batch


def _img(path: Path, size: tuple[int, int] = (12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _img(src / "a.png")
    _img(src / "sub" / "b.jpg")
    _img(src / "sub" / ".hidden" / "c.png")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return src


def _opts(tmp_path: Path, **kw) -> BatchOptions:
    return BatchOptions(out_dir=tmp_path / "out", **kw)


def test_recursive_folder_is_mirrored_and_strays_reported(tmp_path: Path, tree: Path) -> None:
    plan = plan_batch([tree], _opts(tmp_path, recursive=True))
    out = tmp_path / "out"
    assert [(i.source, i.output) for i in plan.items] == [
        (tree / "a.png", out / "a_x4.png"),
        (tree / "sub" / "b.jpg", out / "sub" / "b_x4.png"),
    ]
    # Hidden entries are ignored; a visible non-image is reported as skipped, not crashed on.
    assert [(Path(r.input).name, r.status, r.reason) for r in plan.preflight] == [
        ("Thumbs.db", "skipped", "not an image file type")
    ]


def test_non_recursive_takes_top_level_only(tmp_path: Path, tree: Path) -> None:
    plan = plan_batch([tree], _opts(tmp_path, suffix="", fmt="jpg"))
    assert [i.output.name for i in plan.items] == ["a.jpg"]


def test_glob_mirrors_below_its_fixed_prefix(tmp_path: Path, tree: Path) -> None:
    plan = plan_batch([str(tree / "**" / "*.jpg")], _opts(tmp_path))
    assert [i.output for i in plan.items] == [tmp_path / "out" / "sub" / "b_x4.png"]
    nothing = plan_batch([str(tree / "*.gif")], _opts(tmp_path))
    assert [(r.status, r.reason) for r in nothing.preflight] == [("failed", "no files match this pattern")]


def test_collision_refused_before_any_work(tmp_path: Path) -> None:
    a_png, a_jpg = _img(tmp_path / "in" / "a.png"), _img(tmp_path / "in" / "a.jpg")
    with pytest.raises(PlanError) as info:
        plan_batch([a_png, a_jpg], _opts(tmp_path))
    assert len(info.value.problems) == 1
    assert "2 inputs would write this output" in info.value.problems[0]
    assert not (tmp_path / "out").exists()


def test_output_onto_input_refused(tmp_path: Path) -> None:
    a = _img(tmp_path / "in" / "a.png")
    with pytest.raises(PlanError, match="would overwrite the input"):
        plan_batch([a], BatchOptions(out_dir=tmp_path / "in", suffix=""))
    with pytest.raises(PlanError, match="output folder is this input folder"):
        plan_batch([tmp_path / "in"], BatchOptions(out_dir=tmp_path / "in"))


def test_output_folder_inside_input_tree_is_not_rescanned(tmp_path: Path, tree: Path) -> None:
    _img(tree / "up" / "a_x4.png")  # a previous run's output
    plan = plan_batch([tree], BatchOptions(out_dir=tree / "up", recursive=True))
    seen = [i.source.name for i in plan.items] + [Path(r.input).name for r in plan.preflight]
    assert sorted(seen) == ["Thumbs.db", "a.png", "b.jpg"]  # up/a_x4.png is not an input
    assert [r.reason for r in plan.preflight if r.input.endswith("a.png")] == [
        "output exists (use --overwrite or --skip-existing)"
    ]


@pytest.mark.parametrize(
    ("existing", "status", "items"),
    [("fail", "failed", 0), ("skip", "skipped", 0), ("overwrite", None, 1)],
)
def test_existing_output_policies(tmp_path: Path, existing: str, status: str | None, items: int) -> None:
    a = _img(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_x4.png").write_bytes(b"previous")
    plan = plan_batch([a], _opts(tmp_path, existing=existing))
    assert len(plan.items) == items
    assert [r.status for r in plan.preflight] == ([status] if status else [])


def test_missing_input_reported(tmp_path: Path) -> None:
    plan = plan_batch([tmp_path / "nope.png"], _opts(tmp_path))
    assert [(r.status, r.reason) for r in plan.preflight] == [("failed", "no such file or folder")]


def test_stale_temps_of_our_outputs_only_are_removed(tmp_path: Path) -> None:
    a = _img(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    import os
    import tempfile

    fd, name = tempfile.mkstemp(prefix=".a_x4.", suffix=".part.png", dir=out)  # what a killed write leaves
    os.close(fd)
    stale = Path(name)
    # not ours: another output's temp, and files that only look alike (issue 24)
    unrelated = [out / ".b_x4.k2j3h4x9.part.png", out / ".a_x4.v2_x4.k3j9x0qz.part.png", out / ".a_x4.notes.part.png"]
    for path in (stale, *unrelated):
        path.write_bytes(b"half")
    plan = plan_batch([a], _opts(tmp_path))
    assert plan.stale_temps == [stale]
    assert remove_stale_temps(plan) == 1
    assert not stale.exists() and all(p.exists() for p in unrelated)


def test_memory_planner_refusal_is_a_per_file_failure(tmp_path: Path) -> None:
    small, big = _img(tmp_path / "s.png", (4, 4)), _img(tmp_path / "b.png", (40, 40))
    upscaler = Upscaler(InterpolationPipeline(max_output_pixels=64 * 64))
    options = _opts(tmp_path)
    plan = plan_batch([small, big], options)
    report = run_batch(plan, lambda item: process_item(upscaler, item, options))
    by_name = {Path(r.input).name: r for r in report.results}
    assert by_name["s.png"].status == "done" and by_name["s.png"].output_size == (16, 16)
    assert by_name["b.png"].status == "failed"
    assert by_name["b.png"].reason.startswith("too large for this device: 160×160 output")
    assert not (tmp_path / "out" / "b_x4.png").exists()


def test_bad_files_fail_alone_and_leave_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    reasons = write_bad_files(src)
    _img(src / "good.png")
    options = _opts(tmp_path)
    plan = plan_batch([src], options)
    upscaler = Upscaler(InterpolationPipeline())
    report = run_batch(plan, lambda item: process_item(upscaler, item, options))
    by_name = {Path(r.input).name: r for r in report.results}
    assert by_name["good.png"].status == "done"
    for name, fragment in reasons.items():
        assert by_name[name].status == "failed" and fragment in by_name[name].reason
    assert report.summary()["done"] == 1 and report.summary()["failed"] == len(reasons)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_x4.png"]


def test_process_item_never_raises_for_unexpected_errors(tmp_path: Path) -> None:
    class Broken(InterpolationPipeline):
        def __call__(self, images, tiled=False):
            raise RuntimeError("kernel exploded\nsecond line")

    item = WorkItem(_img(tmp_path / "a.png"), tmp_path / "out" / "a_x4.png", "a.png")
    result = process_item(Upscaler(Broken()), item, _opts(tmp_path))
    assert (result.status, result.reason) == ("failed", "RuntimeError: kernel exploded")


@pytest.mark.parametrize("names", [("A.png", "a.png"), ("caf\u00e9.png", "cafe\u0301.png")])
def test_outputs_equal_after_case_folding_or_normalisation_are_refused(tmp_path: Path, names) -> None:
    """Distinct names on Linux, one file on APFS/exFAT/SMB: --overwrite would replace one with the other."""
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        _img(src / name)
    if len(list(src.iterdir())) < 2:
        pytest.skip("this file system already merges the two names")
    with pytest.raises(PlanError) as info:
        plan_batch([src], _opts(tmp_path, existing="overwrite"))
    (problem,) = info.value.problems
    assert "differ only in letter case or Unicode form" in problem
    for name in names:  # both outputs named, each in its own Unicode form
        assert str(tmp_path / "out" / f"{Path(name).stem}_x4.png") in problem
    assert not (tmp_path / "out").exists()


def test_a_mirrored_subfolder_that_is_a_file_fails_in_planning(tmp_path: Path) -> None:
    _img(tmp_path / "src" / "sub" / "a.png")
    _img(tmp_path / "src" / "b.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_bytes(b"a file where the subfolder goes")
    plan = plan_batch([tmp_path / "src"], _opts(tmp_path, recursive=True, existing="overwrite"))
    assert [i.output.name for i in plan.items] == ["b_x4.png"]  # the other file still runs
    (failed,) = plan.preflight
    assert failed.status == "failed"
    assert failed.reason == f"cannot write: {tmp_path / 'out' / 'sub'} is a file, not a folder"
    assert (tmp_path / "out" / "sub").read_bytes() == b"a file where the subfolder goes"


def test_a_folder_turned_file_after_planning_is_not_called_output_exists(tmp_path: Path) -> None:
    a = _img(tmp_path / "src" / "sub" / "a.png")
    options = _opts(tmp_path, recursive=True, existing="overwrite")
    plan = plan_batch([tmp_path / "src"], options)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_bytes(b"appeared after planning")
    result = process_item(Upscaler(InterpolationPipeline()), plan.items[0], options)
    assert result.status == "failed" and result.reason.startswith("cannot write output (")
    assert "output exists" not in result.reason and a.is_file()
