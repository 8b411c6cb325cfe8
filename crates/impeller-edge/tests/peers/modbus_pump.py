#!/usr/bin/env python3
"""A pump controller for tests: a pymodbus TCP server holding the registers of
crates/impeller-edge/config/modbus/acme-p200.toml, with values that move a little every 100 ms.

    modbus_pump.py PORT

Physical values (SI): suction 1.0 bar, discharge 1.6 bar, flow 32 L/min, current 1.94 A,
bearing 60 °C, vibration 4 mm/s, 1480 rpm; encoded in the controller's units (psi, US gpm,
°F, in/s) and scalings, as the register map says. Input registers 0..6 and holding register
100 exist; every other address answers "illegal data address".
"""
import asyncio
import math
import struct
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncTcpServer

PSI_PER_BAR = 14.503773773
GPM_PER_LPM = 1 / 3.785411784


def words_f32_big(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def i16(v):
    return int(round(v)) & 0xFFFF


def input_registers(t):
    wobble = 1 + 0.01 * math.sin(t)
    suction = 1.0 * wobble * PSI_PER_BAR
    discharge = 1.6 * wobble * PSI_PER_BAR
    flow = 32.0 * wobble * GPM_PER_LPM
    return [i16(suction / 0.01), i16(discharge / 0.01), *words_f32_big(flow),
            int(round(1.94 * wobble / 0.01)), i16((60 * 9 / 5 + 32) / 0.1), int(round(4.0 / 25.4 / 0.001))]


async def main(port):
    # pymodbus's data blocks are one-based: protocol address a lives at block address a + 1.
    ir = ModbusSequentialDataBlock(1, input_registers(0.0))
    hr = ModbusSequentialDataBlock(101, [1480])
    store = ModbusSlaveContext(ir=ir, hr=hr)
    context = ModbusServerContext(slaves=store, single=True)

    async def move():
        t = 0.0
        while True:
            await asyncio.sleep(0.1)
            t += 0.1
            store.setValues(4, 0, input_registers(t))

    asyncio.get_running_loop().create_task(move())
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
