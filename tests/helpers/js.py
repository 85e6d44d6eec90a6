"""Running a Node driver of tests/js*/ whose phases the test measures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path


async def run_marked(node: str, script: Path, config: dict, bytes_a: Callable[[], int], bytes_b: Callable[[], int],
                     timeout: float = 900) -> tuple[dict, dict[str, tuple[int, int]]]:
    """Run ``script`` (argument: ``config`` as JSON); at each ``{"mark":
    name}`` line it prints, read ``bytes_a()``/``bytes_b()`` and let it go on
    (a newline on its stdin).  Returns its last JSON line (the result) and
    the bytes each side carried per phase, from one mark to the next."""
    process = await asyncio.create_subprocess_exec(
        node, str(script), json.dumps(config), cwd=script.parent,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    marks: list[tuple[str, int, int]] = []
    result = None
    try:
        async with asyncio.timeout(timeout):
            while result is None:
                line = await process.stdout.readline()
                assert line, (await process.stderr.read()).decode()[-3000:]
                if not line.startswith(b"{"):
                    continue
                message = json.loads(line)
                if "mark" in message:
                    marks.append((message["mark"], bytes_a(), bytes_b()))
                    process.stdin.write(b"\n")
                    await process.stdin.drain()
                else:
                    result = message
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    return result, {name: (a1 - a0, b1 - b0) for (name, a0, b0), (_, a1, b1) in zip(marks, marks[1:])}
