"""``iotctl hj212``: decode and encode HJ 212-2017 frames.

::

    iotctl hj212 decode '##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80'
    echo '##0101QN=...' | iotctl hj212 decode
    iotctl hj212 encode --cn 2011 --mn 010000A8900016F000169DC0 --cp 'DataTime=20160801085857;a34004-Rtd=35.2,a34004-Flag=N'

``decode`` prints the frame as JSON; on an invalid frame it exits with status 1 and says
why (the declared and actual lengths, the received and computed CRCs, the field and the
reason). The trailing CR LF may be left out or written as the two characters ``\\r\\n``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any

import typer

from drivers.hj212.codec import (
    DATA_FLAGS,
    Frame,
    FrameError,
    decode_frame,
    encode_frame,
    parse_cp,
)
from drivers.hj212.messages import DataUpload, parse_message

__all__ = ["app", "frame_to_json"]

app = typer.Typer(help="HJ 212-2017 frames: decode, encode.", no_args_is_help=True)


def _normalise(text: str) -> bytes:
    text = text.strip()
    text = text.replace("\\r", "\r").replace("\\n", "\n").rstrip("\r\n")
    return text.encode("utf-8", errors="surrogateescape") + b"\r\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def frame_to_json(frame: Frame, raw: bytes) -> dict[str, Any]:
    """The JSON document ``decode`` prints for a frame."""
    message = parse_message(frame)
    if isinstance(message, DataUpload):
        body: dict[str, Any] = {
            "type": "DataUpload",
            "data_time": message.data_time.isoformat(),
            "pollutants": {
                code: {
                    **p.fields,
                    **(
                        {"flag_meaning": DATA_FLAGS.get(p.flag, "unknown flag")}
                        if p.flag is not None
                        else {}
                    ),
                }
                for code, p in message.pollutants.items()
            },
        }
    else:
        fields = asdict(message) if is_dataclass(message) else {}
        body = {"type": type(message).__name__, **_jsonable(fields)}
        if hasattr(message, "meaning"):
            body["meaning"] = message.meaning
        body.pop("data", None)
    return {
        "length": int(raw[2:6]),
        "crc": raw[-6:-2].decode("ascii").upper(),
        "qn": frame.qn,
        "st": frame.st,
        "cn": frame.cn,
        "pw": frame.pw,
        "mn": frame.mn,
        "flag": frame.flag,
        "flag_bits": None
        if frame.flag is None
        else {"version": frame.version, "split": frame.is_split, "ack": frame.ack_requested},
        "pnum": frame.pnum,
        "pno": frame.pno,
        "cp": [dict(item) for item in frame.cp.items],
        "message": body,
    }


@app.command()
def decode(
    frame: Annotated[
        str | None, typer.Argument(help="The frame; read from standard input when left out.")
    ] = None,
) -> None:
    """Decode one frame and print it as JSON; exit 1 saying why if it is invalid."""
    text = frame if frame is not None else sys.stdin.read()
    raw = _normalise(text)
    try:
        decoded = decode_frame(raw)
        document = frame_to_json(decoded, raw)
    except FrameError as exc:
        typer.echo(f"invalid frame: {exc.reason}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(document, ensure_ascii=False, indent=2))


@app.command()
def encode(
    cn: Annotated[str, typer.Option(help="Command code, e.g. 2011.")],
    mn: Annotated[str, typer.Option(help="Device id (MN).")],
    cp: Annotated[str, typer.Option(help="CP contents, e.g. 'DataTime=...;a34004-Rtd=35'.")] = "",
    st: Annotated[str, typer.Option(help="System code.")] = "22",
    pw: Annotated[str, typer.Option(help="Password.")] = "123456",
    qn: Annotated[str | None, typer.Option(help="Request number yyyyMMddHHmmssZZZ.")] = None,
    flag: Annotated[int | None, typer.Option(help="Flag (4 = HJ 212-2017, 5 = + answer).")] = 4,
) -> None:
    """Build a frame (length and CRC computed) and print it without the CR LF."""
    try:
        data = encode_frame(Frame(cn=cn, st=st, pw=pw, mn=mn, qn=qn, flag=flag, cp=parse_cp(cp)))
    except FrameError as exc:
        typer.echo(f"cannot encode: {exc.reason}", err=True)
        raise typer.Exit(1) from None
    typer.echo(data.decode("ascii").rstrip("\r\n"))
