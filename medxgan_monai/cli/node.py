"""Command line of the DICOM node: ``medxgan-node serve`` (C-STORE SCP) and ``medxgan-node dicomweb`` (one study).

Usage::

    medxgan-node serve --ae-title MEDXGAN --port 11112 --allow ORTHANC --destination ORTHANC@127.0.0.1:4242 \\
        --spool spool/ [--methods medxgan gradcam] [--modality MR CT] [--device cpu] [--overlay] [--series-quiet 2]
        [--host 10.0.0.5 --tls-cert node.pem --tls-key node.key --tls-ca hospital-ca.pem --destination-tls]
    medxgan-node dicomweb --url http://127.0.0.1:8042/dicom-web --study 1.2.3... --spool spool/ \\
        [--by-series] [--series 1.2.3.4...]

The SCP listens on 127.0.0.1 unless ``--host`` says otherwise; on any other address it needs an ``--allow`` list (or
``--allow-any-calling-ae``). AE titles are not authentication: ``--tls-ca`` makes callers present a certificate.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE
from medxgan_monai.cli.explain import add_methods_argument
from medxgan_monai.node.dimse import ACSE_TIMEOUT, DIMSE_TIMEOUT, MAXIMUM_ASSOCIATIONS, NETWORK_TIMEOUT, is_loopback
from medxgan_monai.node.processor import DEFAULT_MODALITIES
from medxgan_monai.node.spool import is_valid_uid

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
    add_methods_argument(common, ["medxgan_ig"], "default: medxgan_ig, the default map, stored as DICOM")
    common.add_argument("--modality", nargs="+", default=list(DEFAULT_MODALITIES), help="accepted modalities")
    common.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    common.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    common.add_argument("--batch-size", type=int, default=16, help="instances explained per bundle run")
    common.add_argument(
        "--series-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="explain by series: a series is explained as one volume (one multi-frame Parametric Map and one "
        "Segmentation back) once none of its instances arrived for SECONDS, or all its ImagesInAcquisition did "
        "(default: instance by instance)",
    )
    common.add_argument(
        "--overlay",
        action="store_true",
        help="also send a Secondary Capture of the map over each image (default: the Parametric Map only)",
    )
    common.add_argument(
        "--torch-threads", type=int, default=None, help="PyTorch threads while explaining (default: cores - 1, >= 1)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="run a C-STORE SCP that explains what it receives")
    serve.add_argument("--ae-title", default="MEDXGAN")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=11112)
    serve.add_argument("--allow", nargs="*", default=[], help="calling AE titles allowed (default: any)")
    serve.add_argument(
        "--allow-any-calling-ae",
        action="store_true",
        help="listen on a non-loopback --host without an --allow list (refused otherwise)",
    )
    serve.add_argument("--destination", type=_destination, required=True, help="where results go: AE@HOST:PORT")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate of the node: the SCP speaks TLS only")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-ca",
        type=Path,
        help="PEM CA bundle: callers must present a certificate it signed; with --destination-tls, it also verifies"
        " the destination (default there: the system's CAs)",
    )
    serve.add_argument(
        "--destination-tls",
        action="store_true",
        help="send results over TLS (presenting --tls-cert/--tls-key when given)",
    )
    limits = serve.add_argument_group("network limits")
    limits.add_argument(
        "--acse-timeout", type=float, default=ACSE_TIMEOUT, help="s a peer has to request an association"
    )
    limits.add_argument(
        "--network-timeout", type=float, default=NETWORK_TIMEOUT, help="s of silence before an association is aborted"
    )
    limits.add_argument("--dimse-timeout", type=float, default=DIMSE_TIMEOUT, help="s to wait for a DIMSE message")
    limits.add_argument("--max-associations", type=int, default=MAXIMUM_ASSOCIATIONS, help="connections served at once")
    web = commands.add_parser("dicomweb", parents=[common], help="explain one study (or series) of a DICOMweb server")
    web.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    web.add_argument("--study", required=True, help="StudyInstanceUID")
    web.add_argument("--series", default=None, metavar="UID", help="pull only this SeriesInstanceUID of the study")
    web.add_argument(
        "--by-series",
        action="store_true",
        help="explain each series pulled as one volume (one multi-frame Parametric Map and one Segmentation back); "
        "a study pulled at once holds its series complete, so --series-quiet defaults to 0",
    )
    return parser


def _check_serve_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse unsafe or incomplete settings before anything starts (exit status 2, as any usage error)."""
    if not args.allow and not args.allow_any_calling_ae and not is_loopback(args.host):
        parser.error(
            f"--host {args.host} without --allow would accept instances from anyone who can reach the port; name the"
            " calling AE titles with --allow, or pass --allow-any-calling-ae"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_ca is not None and args.tls_cert is None and not args.destination_tls:
        parser.error("--tls-ca needs --tls-cert/--tls-key (TLS for the SCP) or --destination-tls")
    if args.series_quiet is not None and args.series_quiet < 0:
        parser.error("--series-quiet must be >= 0")
    for name in ("acse_timeout", "network_timeout", "dimse_timeout", "max_associations"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")


def _check_dicomweb_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse UIDs that are not UIDs (they become part of the request's URL path; the message does not quote them)
    and settle the series mode: ``--by-series`` explains without waiting (``--series-quiet 0``) unless told
    otherwise (exit status 2, as any usage error)."""
    if not is_valid_uid(args.study):
        parser.error("--study must be a valid Study Instance UID (digits and dots, at most 64 characters)")
    if args.series is not None and not is_valid_uid(args.series):
        parser.error("--series must be a valid Series Instance UID (digits and dots, at most 64 characters)")
    if args.series_quiet is not None and args.series_quiet < 0:
        parser.error("--series-quiet must be >= 0")
    if args.by_series and args.series_quiet is None:
        args.series_quiet = 0.0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        _check_serve_arguments(parser, args)
    else:
        _check_dicomweb_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from medxgan_monai.bundle import default_tracking_uri
    from medxgan_monai.node import DicomNode, DimseSender, ExplanationProcessor, Spool, StowSender, explain_study
    from medxgan_monai.node.dimse import client_tls_context, server_tls_context

    overrides = {"methods": list(args.methods)}
    if args.device:
        overrides["device"] = torch.device(args.device)
    spool = Spool(args.spool)
    tracking_uri = default_tracking_uri(Path(args.spool))
    parameters = {"command": args.command, "methods": ",".join(args.methods), "modalities": ",".join(args.modality)}
    parameters.update(overlay=args.overlay, series_quiet=args.series_quiet)
    if args.command == "serve":
        ae_title, host, port = args.destination
        parameters.update(ae_title=args.ae_title, port=args.port, destination=f"{ae_title}@{host}:{port}")
        parameters.update(tls=args.tls_cert is not None, destination_tls=args.destination_tls)
        sender_tls = None
        if args.destination_tls:
            sender_tls = client_tls_context(args.tls_ca, args.tls_cert, args.tls_key)
        sink = DimseSender(host, port, ae_title, calling_ae_title=args.ae_title, ssl_context=sender_tls)
    else:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(args.url)
        parameters.update(url=args.url, series=args.series, by_series=args.by_series)
        sink = StowSender(client)
    processor = ExplanationProcessor(
        spool,
        sink,
        overrides,
        args.bundle,
        args.modality,
        args.batch_size,
        tracking_uri,
        parameters=parameters,
        torch_threads=args.torch_threads,
        overlay=args.overlay,
        series_quiet_seconds=args.series_quiet,
    )
    if args.command == "serve":
        DicomNode(
            processor,
            args.ae_title,
            args.port,
            args.host,
            args.allow,
            ssl_context=server_tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None,
            allow_any_calling_ae=args.allow_any_calling_ae,
            acse_timeout=args.acse_timeout,
            network_timeout=args.network_timeout,
            dimse_timeout=args.dimse_timeout,
            maximum_associations=args.max_associations,
        ).serve_forever()
        return 0
    statistics = explain_study(client, args.study, processor, series_instance_uid=args.series)
    processor.close()
    return 1 if statistics.failed or statistics.delivery_failures else 0


if __name__ == "__main__":
    sys.exit(main())
