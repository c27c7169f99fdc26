"""Modbus: the register codec, the read planner and the Modbus TCP driver."""

from drivers.modbus.codec import decode, encode, register_count
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.modbus.tcp import ModbusTcpDriver

__all__ = ["ModbusTcpDriver", "ReadBlock", "decode", "encode", "plan_reads", "register_count"]
