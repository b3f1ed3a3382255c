"""Command line of the DICOM node: ``medxgan-node serve`` (C-STORE SCP) and ``medxgan-node dicomweb`` (one study).

Usage::

    medxgan-node serve --ae-title MEDXGAN --port 11112 --allow ORTHANC --destination ORTHANC@127.0.0.1:4242 \\
        --spool spool/ [--methods medxgan gradcam] [--modality MR CT] [--device cpu]
    medxgan-node dicomweb --url http://127.0.0.1:8042/dicom-web --study 1.2.3... --spool spool/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE
from medxgan_monai.cli.explain import ALL_METHODS
from medxgan_monai.node.processor import DEFAULT_MODALITIES

__all__ = ["main"]


def _destination(text: str) -> tuple[str, str, int]:
    try:
        ae_title, address = text.split("@", 1)
        host, port = address.rsplit(":", 1)
        return ae_title, host, int(port)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected AE_TITLE@HOST:PORT, got {text!r}") from error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxgan-node", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--spool", required=True, help="spool folder (queue, results, MLflow database)")
    common.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=["medxgan"])
    common.add_argument("--modality", nargs="+", default=list(DEFAULT_MODALITIES), help="accepted modalities")
    common.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    common.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    common.add_argument("--batch-size", type=int, default=16, help="instances explained per bundle run")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="run a C-STORE SCP that explains what it receives")
    serve.add_argument("--ae-title", default="MEDXGAN")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=11112)
    serve.add_argument("--allow", nargs="*", default=[], help="calling AE titles allowed (default: any)")
    serve.add_argument("--destination", type=_destination, required=True, help="where results go: AE@HOST:PORT")
    web = commands.add_parser("dicomweb", parents=[common], help="explain one study of a DICOMweb server")
    web.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    web.add_argument("--study", required=True, help="StudyInstanceUID")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from medxgan_monai.bundle import default_tracking_uri
    from medxgan_monai.node import DicomNode, DimseSender, ExplanationProcessor, Spool, StowSender, explain_study

    overrides = {"methods": list(args.methods)}
    if args.device:
        overrides["device"] = torch.device(args.device)
    spool = Spool(args.spool)
    tracking_uri = default_tracking_uri(Path(args.spool))
    parameters = {"command": args.command, "methods": ",".join(args.methods), "modalities": ",".join(args.modality)}
    if args.command == "serve":
        ae_title, host, port = args.destination
        parameters.update(ae_title=args.ae_title, port=args.port, destination=f"{ae_title}@{host}:{port}")
        sink = DimseSender(host, port, ae_title, calling_ae_title=args.ae_title)
    else:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(args.url)
        parameters.update(url=args.url)
        sink = StowSender(client)
    processor = ExplanationProcessor(
        spool, sink, overrides, args.bundle, args.modality, args.batch_size, tracking_uri, parameters=parameters
    )
    if args.command == "serve":
        DicomNode(processor, args.ae_title, args.port, args.host, args.allow).serve_forever()
        return 0
    statistics = explain_study(client, args.study, processor)
    processor.close()
    return 1 if statistics.failed or statistics.delivery_failures else 0


if __name__ == "__main__":
    sys.exit(main())
