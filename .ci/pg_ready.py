"""Exit 0 if PostgreSQL answers at the URL given (``SELECT 1`` within 10 s), else say why."""

import asyncio
import sys

from cloud.db import connect, where_of

TIMEOUT_S = 10.0


async def _check(url: str) -> None:
    db = await asyncio.wait_for(connect(url), TIMEOUT_S)
    try:
        await asyncio.wait_for(db.fetch("SELECT 1"), TIMEOUT_S)
    finally:
        await db.close()


def main(url: str) -> int:
    try:
        asyncio.run(_check(url))
    except Exception as exc:  # every failure is reported the same way
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"PostgreSQL answers at {where_of(url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
