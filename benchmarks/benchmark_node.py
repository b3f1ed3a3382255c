"""Benchmark: instances per second through the DICOM node on loopback, and latency from receipt to results stored.

For each source size, a throwaway Orthanc holds N synthetic MR slices of one study and routes them to the node
(C-STORE); the node explains them with the shipped bundle (its model grid is 64 pixels; larger sources are resized
in and out) and stores a Parametric Map per instance (and a Secondary Capture with ``--overlay``) back in Orthanc.

Measured, both warm (each has explained one other instance of the same size first, so that neither pays the
process's first-run costs in the timed part): wall time from the routing request until every result is in Orthanc,
and per instance the node's latency from the moment the instance was spooled until its results were accepted by
Orthanc. Then ``--single`` more instances are routed to the warm node one at a time: their latency against their
explanation seconds (the methods' ``seconds_<method>``), as medians.
The baseline, in the same run, is the inference bundle on the same files without networking (``run_inference``),
with the node's PyTorch threads (``default_torch_threads``), the node's outputs (the DICOM objects only) and, as the
node's batches, no MLflow run of its own; the ratio is the node's overhead.

Usage::

    python scripts/benchmark_node.py [--sizes 64 256] [--instances 8] [--single 5] [--methods medxgan_ig] [--overlay]
        [--series 16 64 --series-quiet 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


def _phantom(size: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    lesion = np.sqrt(((grid - rng.uniform(-0.4, 0.4, (2, 1, 1))) ** 2).sum(0)) < 0.15
    return (
        (1000 * (radius < 0.8) - 400 * lesion * (radius < 0.8) + 50 * rng.random((size, size))).clip(0).astype("uint16")
    )


def _write_study(folder: Path, size: int, count: int, first_index: int = 0) -> list[Path]:
    from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice

    folder.mkdir(exist_ok=True)
    patient = SyntheticPatient(f"BENCH-{size}", "BENCHMARK^NODE")
    paths = []
    for index in range(first_index, first_index + count):
        path = folder / f"slice_{index:03d}.dcm"
        geometry = MRSliceGeometry((0.0, 0.0, 4.0 * index), pixel_spacing=(256 / size, 256 / size))
        write_mr_slice(_phantom(size, index), geometry, patient, path, instance_number=index + 1)
        paths.append(path)
    return paths


def measure(size: int, count: int, overrides: dict, workdir: Path, overlay: bool = False, repeats: int = 5) -> dict:
    import pydicom
    import torch

    from medxgan_monai.bundle import run_inference
    from medxgan_monai.io.explanation_outputs import DicomDerivedWriter
    from medxgan_monai.node import DicomNode, DimseSender, ExplanationProcessor, OrthancServer, Spool
    from medxgan_monai.node.orthanc import free_port
    from medxgan_monai.node.processor import default_torch_threads

    folder = workdir / f"sources_{size}"
    folder.mkdir()
    sources = _write_study(folder, size, count)
    (warm_up,) = _write_study(folder / "warm_up", size, 1, first_index=count)
    torch.set_num_threads(default_torch_threads())  # the baseline explains with the node's threads
    direct = {**overrides, "writers": [DicomDerivedWriter(overlay=overlay)], "tracking_uri": None}
    run_inference({**direct, "input": [str(warm_up)], "output_dir": str(workdir / f"direct_warm_up_{size}")})
    start = time.perf_counter()
    run_inference({**direct, "input": [str(p) for p in sources], "output_dir": str(workdir / f"direct_{size}")})
    direct = time.perf_counter() - start

    node_port = free_port()
    with OrthancServer(
        workdir / f"orthanc_{size}", modalities={"node": ("MEDXGAN", "127.0.0.1", node_port)}
    ) as orthanc:
        ids = [orthanc.upload(path) for path in sources]
        sender = DimseSender("127.0.0.1", orthanc.dicom_port, orthanc.ae_title)
        spool = Spool(workdir / f"spool_{size}")
        processor = ExplanationProcessor(spool, sender, overrides, batch_size=count, overlay=overlay)
        node = DicomNode(processor, "MEDXGAN", node_port, allowed_calling_ae_titles=[orthanc.ae_title])
        node.start()
        try:
            _route_one(orthanc, processor, orthanc.upload(warm_up), expected=1)
            study_uid = pydicom.dcmread(sources[0]).StudyInstanceUID
            (study,) = orthanc.rest("/tools/lookup", data=study_uid.encode())
            start = time.perf_counter()
            orthanc.send_to_modality("node", ids)
            per_instance = 3 if overlay else 2  # the source, its Parametric Map (and its Secondary Capture)
            while len(orthanc.rest(f"/studies/{study['ID']}/instances")) < per_instance * count:
                if time.perf_counter() - start > 600:
                    raise TimeoutError("results did not arrive within 10 minutes")
                time.sleep(0.2)
            through_node = time.perf_counter() - start
            single = _single_instances(folder, size, count + 1, repeats, orthanc, processor, overrides)
        finally:
            node.stop()
    latencies = processor.statistics.latency_seconds[1 : count + 1]
    return {
        "size": size,
        "instances": count,
        "direct_s": direct,
        "node_s": through_node,
        "node_per_s": count / through_node,
        "latency_mean": sum(latencies) / len(latencies),
        "latency_max": max(latencies),
        "single_latency": single[0],
        "single_explanation": single[1],
        "single_ratio": single[2],
    }


def measure_series(size: int, count: int, overrides: dict, workdir: Path, quiet: float) -> dict:
    """The node by series (``series_quiet_seconds=quiet``): ``count`` slices of one series routed at once come back
    as one Parametric Map and one Segmentation; seconds from the routing request until both are in Orthanc, against
    the bundle explaining the same series folder directly (no networking, no quiet time)."""
    import pydicom
    import torch

    from medxgan_monai.bundle import run_inference
    from medxgan_monai.io.explanation_outputs import DicomDerivedWriter
    from medxgan_monai.node import DicomNode, DimseSender, ExplanationProcessor, OrthancServer, Spool
    from medxgan_monai.node.orthanc import free_port
    from medxgan_monai.node.processor import default_torch_threads

    folder = workdir / f"series_{size}_{count}"
    sources = _write_study(folder, size, count)
    torch.set_num_threads(default_torch_threads())
    start = time.perf_counter()
    direct_run = {"input": [str(folder)], "output_dir": str(workdir / f"direct_series_{size}_{count}")}
    run_inference({**overrides, **direct_run, "writers": [DicomDerivedWriter(overlay=False)], "tracking_uri": None})
    direct = time.perf_counter() - start
    node_port = free_port()
    modalities = {"node": ("MEDXGAN", "127.0.0.1", node_port)}
    with OrthancServer(workdir / f"orthanc_series_{size}_{count}", modalities=modalities) as orthanc:
        ids = [orthanc.upload(path) for path in sources]
        sender = DimseSender("127.0.0.1", orthanc.dicom_port, orthanc.ae_title)
        spool = Spool(workdir / f"spool_series_{size}_{count}")
        processor = ExplanationProcessor(spool, sender, overrides, series_quiet_seconds=quiet)
        node = DicomNode(processor, "MEDXGAN", node_port, allowed_calling_ae_titles=[orthanc.ae_title])
        node.start()
        try:
            (study,) = orthanc.rest("/tools/lookup", data=pydicom.dcmread(sources[0]).StudyInstanceUID.encode())
            start = time.perf_counter()
            orthanc.send_to_modality("node", ids)
            while len(orthanc.rest(f"/studies/{study['ID']}/instances")) < count + 2:
                if time.perf_counter() - start > 600:
                    raise TimeoutError("the series' results did not arrive within 10 minutes")
                time.sleep(0.1)
            through_node = time.perf_counter() - start
        finally:
            node.stop()
    return {"size": size, "slices": count, "quiet": quiet, "direct_s": direct, "node_s": through_node}


def _single_instances(
    folder: Path, size: int, first: int, repeats: int, orthanc, processor, overrides: dict
) -> tuple[float, float, float]:
    """``repeats`` more instances routed to the warm node one at a time, each after the last one's results arrived.
    Per instance: its latency (spooled to results accepted) and its explanation seconds (the ``seconds_<method>``
    columns of the node's predictions.csv, summed over methods). Returns the median latency, the median explanation
    seconds and the median of the per-instance ratios (a single instance varies by tens of percent between runs)."""
    import csv
    import statistics

    import pydicom

    latencies, explanations = [], []
    for index in range(first, first + repeats):
        (path,) = _write_study(folder / f"single_{index}", size, 1, first_index=index)
        uid = pydicom.dcmread(path).SOPInstanceUID
        _route_one(orthanc, processor, orthanc.upload(path), expected=index + 1)
        with open(processor.spool.results / "predictions.csv", newline="") as stream:
            (row,) = [row for row in csv.DictReader(stream) if row["stem"] == uid]
        explanations.append(sum(float(row[f"seconds_{method}"]) for method in overrides["methods"]))
        latencies.append(processor.statistics.latency_seconds[-1])
    ratios = [latency / explanation for latency, explanation in zip(latencies, explanations, strict=True)]
    return statistics.median(latencies), statistics.median(explanations), statistics.median(ratios)


def _route_one(orthanc, processor, instance: str, expected: int) -> None:
    """Route one instance to the node once the statistics of the ``expected - 1`` before it are in (a batch's
    statistics may land after its results), and wait until its own results are delivered."""
    start = time.perf_counter()
    while len(processor.statistics.latency_seconds) < expected - 1:
        time.sleep(0.05)
    orthanc.send_to_modality("node", [instance])
    while len(processor.statistics.latency_seconds) < expected:
        if time.perf_counter() - start > 600:
            raise TimeoutError("the instance's results did not arrive within 10 minutes")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--single", type=int, default=5, help="instances sent one at a time for the latency")
    parser.add_argument("--methods", nargs="+", default=["medxgan_ig"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlay", action="store_true", help="the node also sends Secondary Capture overlays")
    parser.add_argument(
        "--series",
        type=int,
        nargs="*",
        default=[],
        metavar="SLICES",
        help="also time the node by series: one series of each of these slice counts (64 px), routed at once",
    )
    parser.add_argument("--series-quiet", type=float, default=1.0, help="the node's quiet time by series (s)")
    args = parser.parse_args(argv)
    import logging

    import torch

    from medxgan_monai.node import OrthancServer

    logging.basicConfig(level=logging.WARNING)
    if OrthancServer.executable() is None:
        print("Orthanc is not installed: bash scripts/install_orthanc.sh", file=sys.stderr)
        return 2
    overrides = {"methods": list(args.methods), "device": torch.device(args.device)}
    rows, series_rows = [], []
    with tempfile.TemporaryDirectory(prefix="medxgan_node_bench_") as scratch:
        for size in args.sizes:
            rows.append(measure(size, args.instances, overrides, Path(scratch), args.overlay, args.single))
        for count in args.series:
            series_rows.append(measure_series(64, count, overrides, Path(scratch), args.series_quiet))
    from medxgan_monai.node.processor import default_torch_threads

    print(
        f"DICOM node on loopback, methods {','.join(args.methods)}, device {args.device}, {args.instances} instances "
        f"then {args.single} single ones (medians), "
        f"{'Parametric Map and Secondary Capture' if args.overlay else 'Parametric Map'} per instance, "
        f"{default_torch_threads()} PyTorch thread(s) in both"
    )
    print(
        "| source size | direct bundle s | through node s | node / direct | instances / s "
        "| latency mean s | latency max s | single instances: latency s | explanation s | latency / explanation |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | {row['direct_s']:.1f} | {row['node_s']:.1f} | {row['node_s'] / row['direct_s']:.2f}x "
            f"| {row['node_per_s']:.2f} | {row['latency_mean']:.1f} | {row['latency_max']:.1f} "
            f"| {row['single_latency']:.2f} | {row['single_explanation']:.2f} "
            f"| {row['single_ratio']:.2f}x |"
        )
    if series_rows:
        print(
            f"\nBy series (--series-quiet {args.series_quiet:g} s; default map on the slices the classifier calls "
            "positive): routing request to the Parametric Map and the Segmentation stored"
        )
        print("| slices | direct bundle s | through node s | node - direct s |")
        print("|---|---|---|---|")
        for row in series_rows:
            extra = row["node_s"] - row["direct_s"]
            print(f"| {row['slices']} | {row['direct_s']:.1f} | {row['node_s']:.1f} | {extra:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
