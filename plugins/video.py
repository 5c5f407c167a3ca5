"""Video files as time-ordered, timestamped RGB frames (PyAV).

The ``video`` adapter samples frames from a local video file (MP4/MOV, MKV/WebM, AVI,
MPEG-TS...) into a ``video`` :class:`~longllava_sdk.media.Media` whose ``metadata[i]``
carries ``timestamp`` (seconds from the first frame), ``pts`` (the raw presentation
timestamp, in ``info["time_base"]`` units) and ``frame_index`` (position of the frame in
presentation order).

Sampling (``sampling=``)
    ``"uniform"``
        ``num_frames`` frames at evenly spaced *times* between the first and last frame of
        the clip (first and last included). Spacing is in time, not in frame index, so a
        variable-frame-rate phone video is sampled evenly in time.
    ``"fps"``
        one frame every ``1 / fps`` seconds from the first frame, plus the last frame;
        capped by ``num_frames`` / ``max_images`` (the capped list is subsampled evenly,
        keeping the first and last).
    ``"segments"``
        the clip is cut into ``num_frames`` equal segments and the frame nearest each
        segment's midpoint is taken (TSN-style; first/last frames are *not* forced unless
        ``keep_endpoints=True``).

    The number of frames is ``num_frames``, capped by ``max_images``; with neither,
    :data:`DEFAULT_NUM_FRAMES`. ``start`` / ``end`` (seconds, same origin as
    ``timestamp``) clip the video first.

How frames are found
    Container metadata is not trusted: ``stream.frames`` and the declared duration are
    often wrong or missing (MKV has no frame count, AVI headers lie, truncated files keep
    their original duration). A demux-only pass (no decoding, cheap) lists every video
    packet's timestamp and keyframe flag; the sampling picks among those real timestamps.
    The decode pass then *streams*: for each wanted frame it seeks to the keyframe before it
    when that skips decoding, decodes forward, and keeps only the selected frames, each
    converted straight to a small RGB image (long side at most ``max_side``, the
    display aspect ratio honoured). Memory therefore holds only the output frames plus
    the decoder's own buffers: 1000 16:9 frames at ``max_side=336`` are about 255 MB (Pillow
    keeps 4 bytes per RGB pixel).

Robustness
    * Only local files: URLs and FFmpeg protocols (``http:``, ``rtmp:``, ``file:``,
      ``pipe:``, ``concat:``...) are refused; the file is opened with FFmpeg's protocol
      whitelist set to ``file`` and a whitelist of real container demuxers, and
      playlists/manifests (HLS ``#EXTM3U``, ``ffconcat``, DASH XML) are refused before
      FFmpeg sees them, since they can point at other files or the network.
    * Packets that fail to decode and frames the decoder flags as corrupt are skipped (the
      next good frame stands in) and counted in ``info["warnings"]`` /
      ``info["decode_errors"]``; a video with no decodable frame is an
      :class:`~longllava_sdk.errors.AdapterError`, as are a missing video stream, a codec
      FFmpeg cannot decode, a zero-frame stream, an empty, truncated (header-less) or
      non-video file.
    * Rotation metadata (the display matrix phones write) is applied, so portrait videos
      come out portrait; ``info["rotation"]`` gives the angle (counter-clockwise degrees).
    * Container and stream metadata that is not valid UTF-8 is decoded with replacement
      characters instead of failing.

Limits (each a keyword argument; over one: :class:`~longllava_sdk.errors.ResourceLimitError`)
    ``max_pixels`` (2^26, e.g. 8192 x 8192) per coded frame, checked from the stream header
    and again on every decoded frame before it is converted; ``max_frames`` (1,000,000)
    packets indexed by the demux pass; ``max_decoded_bytes`` (1 GiB) for the output frames
    (4 bytes per pixel), checked before decoding; ``time_budget_s`` (60 s of CPU time of the
    calling thread, checked every 4096 packets and every decoded frame).

Example::

    from longllava_plugins.video import VideoAdapter

    media = VideoAdapter(sampling="fps", fps=1.0, start=30, end=90).load("clip.mp4", max_images=64)
    [m["timestamp"] for m in media.metadata][:3]   # [30.0, 31.0, 32.0] (approximately)
"""

from __future__ import annotations

import bisect
import math
import os
import struct
from array import array
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Literal

from PIL import Image

from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    guarded_load,
    local_source,
    open_confined,
    sample_indices,
    validate_limit,
)
from longllava_sdk.errors import AdapterError, ConfigError, ResourceLimitError
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import Media

SamplingMode = Literal["uniform", "fps", "segments"]
DEFAULT_NUM_FRAMES = 64
#: Largest coded frame (width x height) decoded by default: 8192 x 8192.
DEFAULT_MAX_PIXELS = 2**26
#: Most packets the demux pass indexes by default (about 9 hours at 30 fps).
DEFAULT_MAX_FRAMES = 1_000_000
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".wmv", ".asf", ".flv", ".3gp", ".3g2", ".ogv",
)
#: Demuxers FFmpeg may use (its probing is otherwise free to pick playlist or network demuxers).
ALLOWED_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg,h264,hevc,m4v,ivf"
_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ALLOWED_DEMUXERS}
_MANIFESTS = (b"#EXTM3U", b"ffconcat", b"<?xml", b"<MPD", b"<smil", b"[playlist]")


#: Most ``trak`` boxes an MP4 / QuickTime ``moov`` may hold (a real file has a handful).
MAX_TRACKS = 64
#: Most boxes read at one level of the box tree (top level, ``moov``'s children).
MAX_BOXES_PER_LEVEL = 4096
#: The ISO base media file format brands / first boxes that mark an MP4 / QuickTime file.
_ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp")


def _require_local_file(source: Source) -> Path:
    path = local_source(source, "video", what="video file")  # local, regular (a FIFO never blocks), in the root
    with open_confined(path, what="video file") as handle:
        head = handle.read(64)
        if not head:
            raise AdapterError(path, "empty file")
        if head.lstrip().startswith(_MANIFESTS):
            raise AdapterError(path, "is a playlist / manifest, not a video; playlists can reference other files "
                                     "or the network and are refused")
        if head[4:8] in _ISO_FIRST_BOXES:
            _check_iso_boxes(path, handle)
    return path


def _box_headers(handle: Any, start: int, end: int, path: Path, where: str) -> Iterator[tuple[bytes, int, int]]:
    """``(type, body_start, box_end)`` of the boxes in ``[start, end)``, reading 16 header bytes
    each (never a body); at most :data:`MAX_BOXES_PER_LEVEL`."""
    offset, count = start, 0
    while offset + 8 <= end:
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        body = offset + 8
        if size == 1 and len(header) == 16:
            size = struct.unpack(">Q", header[8:16])[0]
            body = offset + 16
        elif size == 0:
            size = end - offset
        if size < body - offset:
            return  # a malformed box: FFmpeg reports what it makes of it
        count += 1
        if count > MAX_BOXES_PER_LEVEL:
            raise ResourceLimitError(path, f"holds more than {MAX_BOXES_PER_LEVEL:,} boxes in {where} (a real "
                                           "video has a few dozen): refused before FFmpeg parses it")
        yield kind, body, min(offset + size, end)
        offset += size


def _check_iso_boxes(path: Path, handle: Any) -> None:
    """Cost before work for MP4 / QuickTime: the box tree is walked by its headers (top level and
    ``moov``'s children, bounded reads) and a ``moov`` with more than :data:`MAX_TRACKS` tracks,
    or a level with more than :data:`MAX_BOXES_PER_LEVEL` boxes, is refused before
    ``av.open``, whose parse of such a file runs for minutes inside one C call."""
    end = os.fstat(handle.fileno()).st_size
    for kind, body, box_end in _box_headers(handle, 0, end, path, "the file"):
        if kind != b"moov":
            continue
        tracks = sum(1 for child, _, _ in _box_headers(handle, body, box_end, path, "its moov box")
                     if child == b"trak")
        if tracks > MAX_TRACKS:
            raise ResourceLimitError(path, f"its moov box holds {tracks:,} tracks (trak boxes), more than the "
                                           f"{MAX_TRACKS} a video may have: refused before FFmpeg parses it")


# ---------------------------------------------------------------------------------------
# sampling: pure functions over the sorted frame times of the clip
# ---------------------------------------------------------------------------------------
def _nearest(times: list[float], t: float) -> int:
    j = bisect.bisect_left(times, t)
    if j == 0:
        return 0
    if j == len(times):
        return len(times) - 1
    return j if times[j] - t < t - times[j - 1] else j - 1


def _assign_distinct(times: list[float], targets: list[float]) -> list[int]:
    """Nearest frame to each target, forced strictly increasing (needs len(targets) <= len(times))."""
    n, m = len(times), len(targets)
    chosen: list[int] = []
    previous = -1
    for i, t in enumerate(targets):
        j = min(max(_nearest(times, t), previous + 1), n - (m - i))
        chosen.append(j)
        previous = j
    return chosen


def select_frames(
    times: list[float],
    mode: SamplingMode,
    count: int,
    fps: float = 1.0,
    keep_endpoints: bool | None = None,
) -> list[int]:
    """Indices into the sorted frame ``times`` (seconds) chosen by ``mode``.

    Args:
        times: presentation times of the candidate frames, ascending.
        mode: ``uniform`` / ``fps`` / ``segments`` (see the module docstring).
        count: number of frames (``uniform``, ``segments``) or cap (``fps``).
        fps: frames per second for ``fps``.
        keep_endpoints: force the first and last frame (default: True except ``segments``).
    """
    n = len(times)
    if n == 0:
        return []
    if count < 1:
        raise ValueError(f"number of frames must be >= 1, got {count}")
    if keep_endpoints is None:
        keep_endpoints = mode != "segments"
    t0, t1 = times[0], times[-1]
    if mode == "uniform":
        m = min(count, n)
        targets = [t0] if m == 1 else [t0 + i * (t1 - t0) / (m - 1) for i in range(m)]
        chosen = _assign_distinct(times, targets)
    elif mode == "segments":
        m = min(count, n)
        length = t1 - t0
        chosen = _assign_distinct(times, [t0 + (k + 0.5) * length / m for k in range(m)])
    elif mode == "fps":
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        steps = int(math.floor((t1 - t0) * fps + 1e-9))
        chosen = sorted({_nearest(times, t0 + k / fps) for k in range(steps + 1)})
        if keep_endpoints and chosen[-1] != n - 1:
            chosen.append(n - 1)
        if len(chosen) > count:
            chosen = [chosen[i] for i in sample_indices(len(chosen), count)]
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected 'uniform', 'fps' or 'segments'")
    if keep_endpoints and chosen:
        chosen[0] = 0
        if len(chosen) > 1:
            chosen[-1] = n - 1
    return chosen


# ---------------------------------------------------------------------------------------
# frame conversion
# ---------------------------------------------------------------------------------------
def output_size(width: int, height: int, sample_aspect: Fraction | None, max_side: int) -> tuple[int, int]:
    """Display size (sample aspect ratio applied) scaled so its long side is <= ``max_side``."""
    display_w = width * float(sample_aspect) if sample_aspect and sample_aspect > 0 else float(width)
    scale = min(1.0, max_side / max(display_w, height))
    return max(1, round(display_w * scale)), max(1, round(height * scale))


def apply_rotation(image: Image.Image, degrees_ccw: float) -> Image.Image:
    """Rotate ``image`` counter-clockwise by the display-matrix angle (PyAV ``frame.rotation``)."""
    angle = round(degrees_ccw) % 360
    transposes = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if angle == 0:
        return image
    if angle in transposes:
        return image.transpose(transposes[angle])
    return image.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)


class _Index:
    """Result of the demux-only pass: sorted presentation timestamps and keyframe timestamps."""

    def __init__(self) -> None:
        self.pts = array("q")
        self.keyframes = array("q")
        self.untimed = 0
        self.demux_error: str | None = None


class VideoAdapter(InputAdapter):
    """A local video file -> sampled, timestamped RGB frames (kind ``video``).

    Args:
        sampling: ``"uniform"``, ``"fps"`` or ``"segments"``.
        num_frames: frames to return (cap for ``fps``); capped by ``max_images``.
        fps: sampling rate for ``sampling="fps"``.
        start: clip start in seconds from the first frame (``None``: beginning).
        end: clip end in seconds (``None``: the last frame), inclusive.
        max_side: long side of returned frames in pixels (never upscaled).
        keep_endpoints: force the clip's first and last frames (default: True except for
            ``segments``).
        stream: which video stream (0 = the first).
        resize_interpolation: swscale interpolation for the on-the-fly resize.
        max_pixels: refuse streams whose coded frames are larger than this (width x height).
        max_frames: refuse files with more video packets than this (the demux pass stops).
        max_decoded_bytes: bound on the output frames (4 bytes per pixel).
        time_budget_s: CPU seconds one ``load`` may use (``None``: unlimited).
    """

    name = "video"
    kind = "video"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("sampling", "num_frames", "fps", "start", "end", "keep_endpoints", "stream")
    data_error_libraries = {"av": "PyAV/FFmpeg"}
    extensions = VIDEO_EXTENSIONS
    priority = 100
    #: Seek instead of decoding through when that skips more than this many frames.
    SEEK_MIN_SKIP = 16

    def __init__(
        self,
        *,
        sampling: SamplingMode = "uniform",
        num_frames: int | None = None,
        fps: float = 1.0,
        start: float | None = None,
        end: float | None = None,
        max_side: int = 336,
        keep_endpoints: bool | None = None,
        stream: int = 0,
        resize_interpolation: str = "AREA",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    ) -> None:
        if sampling not in ("uniform", "fps", "segments"):
            raise ValueError(f"sampling must be 'uniform', 'fps' or 'segments', got {sampling!r}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if start is not None and start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if start is not None and end is not None and end < start:
            raise ValueError(f"end ({end}) is before start ({start})")
        if not 16 <= max_side <= 8192:
            raise ValueError(f"max_side must be in 16..8192, got {max_side}")
        self.sampling: SamplingMode = sampling
        self.num_frames = num_frames
        self.fps = float(fps)
        self.start = start
        self.end = end
        self.max_side = max_side
        self.keep_endpoints = keep_endpoints
        self.stream = stream
        self.resize_interpolation = resize_interpolation
        self.max_pixels = validate_limit("max_pixels", max_pixels, allow_none=False)
        self.max_frames = validate_limit("max_frames", max_frames, allow_none=False)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)

    # -- container access -----------------------------------------------------------------
    def _open(self, path: Path) -> Any:
        import av

        try:
            # An absolute path can never be read as "protocol:..." by FFmpeg. Metadata that is
            # not UTF-8 is decoded with replacement characters instead of failing.
            return av.open(str(path.resolve()), options=dict(_OPEN_OPTIONS), metadata_errors="replace")
        except av.error.EOFError as exc:
            raise AdapterError(path, f"file ends before any video data (empty or zero-frame video): {exc}") from exc
        except av.error.MemoryError as exc:
            # FFmpeg refuses absurd counts/sizes (sample tables...) with ENOMEM before allocating
            raise AdapterError(path, "corrupt container: a size or count in its header asks FFmpeg for more memory "
                                     f"than the file can need ({exc})") from exc
        except av.error.InvalidDataError as exc:
            raise AdapterError(path, "not a video FFmpeg can read (unknown container, or corrupt / "
                                     f"truncated header): {exc}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise AdapterError(path, f"cannot open video: {exc}") from exc

    def _video_stream(self, container: Any, path: Path) -> Any:
        streams = list(container.streams.video)
        if not streams:
            raise AdapterError(path, "has no video stream (audio-only or not a video)")
        if not 0 <= self.stream < len(streams):
            raise AdapterError(path, f"video stream {self.stream} requested, file has {len(streams)}")
        stream = streams[self.stream]
        codec = stream.codec_context
        if codec is None or not getattr(codec, "name", None) or codec.name == "none":
            raise AdapterError(path, "video stream uses a codec FFmpeg has no decoder for (unknown or "
                                     "unsupported codec); cannot decode")
        self._check_frame_size(path, codec.width or 0, codec.height or 0)
        return stream

    def _check_frame_size(self, path: Path, width: int, height: int) -> None:
        check_limit(path, width * height, self.max_pixels, "max_pixels",
                    f"the coded frame size {width} x {height} px")

    def _index(self, path: Path) -> tuple[_Index, dict[str, Any]]:
        """Demux-only pass: every video packet's timestamp and keyframe flag (no decoding)."""
        import av

        index = _Index()
        with self._open(path) as container:
            stream = self._video_stream(container, path)
            facts = {
                "codec": stream.codec_context.name,
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "time_base": stream.time_base,
                "average_rate": stream.average_rate,
                "declared_frames": int(stream.frames or 0),
                "declared_duration": (
                    float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration / 1e6 if container.duration else None)
                ),
                "container": container.format.name,
                "sample_aspect": stream.sample_aspect_ratio,
            }
            if stream.time_base is None:
                raise AdapterError(path, "video stream has no time base; cannot place frames in time")
            try:
                for count, packet in enumerate(container.demux(stream)):
                    if count >= self.max_frames:
                        check_limit(path, count + 1, self.max_frames, "max_frames",
                                    "the number of video packets", hint="the demux pass stopped there")
                    if count % 4096 == 4095:
                        check_time_budget(f"indexing packets, after {count + 1}")
                    if packet.size == 0 or packet.is_discard:
                        continue
                    ts = packet.pts if packet.pts is not None else packet.dts
                    if ts is None:
                        index.untimed += 1
                        continue
                    index.pts.append(ts)
                    if packet.is_keyframe:
                        index.keyframes.append(ts)
            except av.error.FFmpegError as exc:
                index.demux_error = f"demuxing stopped after {len(index.pts)} packets: {exc}"
        index.pts = array("q", sorted(set(index.pts)))
        index.keyframes = array("q", sorted(set(index.keyframes)))
        return index, facts

    # -- public ---------------------------------------------------------------------------
    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Sample frames from one local video file (see the module docstring)."""
        if max_images is not None and max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {max_images}")
        path = _require_local_file(source)
        index, facts = self._index(path)
        warnings_: list[str] = []
        if index.demux_error:
            warnings_.append(index.demux_error)
        if index.untimed:
            warnings_.append(f"{index.untimed} packets without timestamps ignored")
        if not index.pts:
            raise AdapterError(path, "video stream has no frames (zero-frame video)")
        time_base: Fraction = facts["time_base"]
        origin = index.pts[0]
        all_times = [float((p - origin) * time_base) for p in index.pts]
        observed = all_times[-1]
        declared = facts["declared_duration"]
        if declared and observed + 1.0 < 0.9 * declared:
            warnings_.append(f"container declares {declared:.2f} s but frames end at {observed:.2f} s "
                             "(truncated file?)")
        if facts["declared_frames"] and facts["declared_frames"] != len(index.pts):
            warnings_.append(f"container declares {facts['declared_frames']} frames, found {len(index.pts)}")

        lo = bisect.bisect_left(all_times, self.start) if self.start is not None else 0
        hi = bisect.bisect_right(all_times, self.end) if self.end is not None else len(all_times)
        if lo >= hi:
            raise AdapterError(path, f"no frames between start={self.start} and end={self.end} s "
                                     f"(video spans 0..{observed:.3f} s)")
        budget = [v for v in (self.num_frames, max_images) if v is not None]
        count = min(budget) if budget else DEFAULT_NUM_FRAMES
        chosen = [lo + i for i in select_frames(all_times[lo:hi], self.sampling, count, self.fps,
                                                  self.keep_endpoints)]
        out_w, out_h = output_size(max(1, facts["width"] or 1), max(1, facts["height"] or 1),
                                   facts["sample_aspect"], self.max_side)
        check_limit(path, len(chosen) * max(out_w, out_h) ** 2 * RGB_BYTES_PER_PIXEL, self.max_decoded_bytes,
                    "max_decoded_bytes", f"the {len(chosen)} output frame(s) of up to {self.max_side} px "
                    "(4 bytes per pixel)", unit="bytes", hint="lower num_frames / max_images or max_side")
        frames, metadata, stats = self._decode(path, index, chosen, time_base, origin)
        if stats["decode_errors"]:
            warnings_.append(f"{stats['decode_errors']} packets failed to decode and were skipped")
        if stats["corrupt_frames"]:
            warnings_.append(f"{stats['corrupt_frames']} frames flagged corrupt by the decoder were skipped")
        if stats["missed"]:
            warnings_.append(f"{stats['missed']} selected frames could not be decoded (skipped, or the next "
                             "decodable frame stands in)")
        if not frames:
            raise AdapterError(
                path,
                f"no decodable video frames ({len(index.pts)} packets, {stats['decode_errors']} decode errors, "
                f"{stats['corrupt_frames']} corrupt frames)",
            )
        rate = facts["average_rate"]
        info = {
            "codec": facts["codec"],
            "container": facts["container"],
            "width": facts["width"],
            "height": facts["height"],
            "fps": float(rate) if rate else None,
            "time_base": str(time_base),
            "start_pts": origin,
            "n_frames": len(index.pts),
            "declared_frames": facts["declared_frames"],
            "duration": observed,
            "declared_duration": declared,
            "rotation": stats["rotation"],
            "sampling": self.sampling,
            "requested_frames": count,
            "clip": (all_times[lo], all_times[hi - 1]),
            "decode_errors": stats["decode_errors"],
            "seeks": stats["seeks"],
            "warnings": warnings_,
        }
        return Media("video", frames, metadata, source=str(path), info=info)

    # -- decoding ---------------------------------------------------------------------------
    def _frames(self, container: Any, stream: Any, stats: dict[str, Any]) -> Iterator[Any]:
        import av

        try:
            for packet in container.demux(stream):
                try:
                    yield from packet.decode()
                except av.error.FFmpegError:
                    stats["decode_errors"] += 1
        except av.error.FFmpegError:
            stats["decode_errors"] += 1  # demuxer gave up (truncated data): end of stream

    def _decode(
        self, path: Path, index: _Index, chosen: list[int], time_base: Fraction, origin: int
    ) -> tuple[list[Image.Image], list[dict[str, Any]], dict[str, Any]]:
        import av

        targets = [index.pts[i] for i in chosen]
        keyframes = index.keyframes
        stats: dict[str, Any] = {"decode_errors": 0, "corrupt_frames": 0, "missed": 0, "rotation": 0, "seeks": 0}
        frames: list[Image.Image] = []
        metadata: list[dict[str, Any]] = []
        with self._open(path) as container:
            stream = self._video_stream(container, path)
            stream.thread_type = "AUTO"
            sample_aspect = stream.sample_aspect_ratio
            frame_iter: Iterator[Any] | None = None
            position: int | None = None  # pts of the last frame the decoder produced
            can_seek = True
            t = 0
            while t < len(targets):
                target = targets[t]
                k = bisect.bisect_right(keyframes, target) - 1
                keyframe = keyframes[k] if k >= 0 else None
                # Seek only when it skips real work: the keyframe before the target lies at least
                # SEEK_MIN_SKIP frames past what the decoder has produced (a seek flushes the decoder).
                done = -1 if position is None else bisect.bisect_right(index.pts, position) - 1
                skip_ahead = keyframe is not None and keyframe > origin and (
                    bisect.bisect_left(index.pts, keyframe) - done > self.SEEK_MIN_SKIP
                )
                if frame_iter is None or (can_seek and skip_ahead):
                    if can_seek and skip_ahead:
                        try:
                            container.seek(int(keyframe), stream=stream, backward=True, any_frame=False)
                            stats["seeks"] += 1
                        except av.error.FFmpegError:
                            can_seek = False  # broken index: decode sequentially from here
                    frame_iter = self._frames(container, stream, stats)
                found = None
                for frame in frame_iter:
                    check_time_budget(f"decoding, {len(frames)} of {len(targets)} frames done")
                    pts = frame.pts if frame.pts is not None else frame.dts
                    if pts is None:
                        continue
                    position = pts
                    if pts < target:
                        continue
                    if frame.is_corrupt:
                        stats["corrupt_frames"] += 1
                        continue
                    found = frame
                    break
                if found is None:  # stream ended before this target
                    stats["missed"] += len(targets) - t
                    break
                pts = position
                assert pts is not None
                following = bisect.bisect_right(targets, pts, lo=t + 1)
                stats["missed"] += following - (t + 1)
                t = following
                self._check_frame_size(path, found.width, found.height)
                size = output_size(found.width, found.height, sample_aspect, self.max_side)
                image = found.to_image(width=size[0], height=size[1], interpolation=self.resize_interpolation)
                rotation = getattr(found, "rotation", 0) or 0
                if rotation:
                    stats["rotation"] = rotation
                    image = apply_rotation(image, rotation)
                frames.append(image)
                metadata.append({
                    "timestamp": float((pts - origin) * time_base),
                    "pts": int(pts),
                    "frame_index": bisect.bisect_left(index.pts, pts),
                })
        return frames, metadata, stats


@hookimpl
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Register the video adapter."""
    return [VideoAdapter]
