"""CoAP (RFC 7252, UDP): the settings and the aiocoap-based driver with Observe and block-wise."""

from drivers.coap.driver import (
    CoapDeviceException,
    CoapDriver,
    coap_code_name,
    decode_payload,
    encode_payload,
)
from drivers.coap.settings import CoapSettings

__all__ = [
    "CoapDeviceException",
    "CoapDriver",
    "CoapSettings",
    "coap_code_name",
    "decode_payload",
    "encode_payload",
]
