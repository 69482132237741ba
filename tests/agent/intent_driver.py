"""The real Agent from a config file, recording a ``vehicle.event`` intent every few ms.

Run as ``python -m tests.agent.intent_driver CONFIG [EVERY_S]`` by the kill -9 loop: it
prints each intent id on its own line once ``report_event`` returned, i.e. once the
intent is committed, so the parent knows which intents the agent acknowledged.
"""

import asyncio
import sys
from pathlib import Path

from agent.config import load_config
from agent.errors import NotRunningError
from agent.runner import Agent


async def main(config: Path, every_s: float) -> None:
    agent = Agent(load_config(config))
    task = asyncio.create_task(agent.run())
    n = 0
    while not task.done():
        try:
            intent_id = await agent.report_event("moving", detail=f"#{n}")
        except NotRunningError:  # the store is not open yet
            await asyncio.sleep(0.001)
            continue
        sys.stdout.write(intent_id + "\n")
        sys.stdout.flush()
        n += 1
        await asyncio.sleep(every_s)
    await task


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.005))
