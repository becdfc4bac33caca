"""Coroutines that do the work of each task type, chosen by the task's type."""

import asyncio
import random
from collections.abc import Awaitable, Callable

from app.crud import ClaimedRun

TaskHandler = Callable[[ClaimedRun], Awaitable[None]]

HANDLERS: dict[str, TaskHandler] = {}


class SimulatedFailure(Exception):
    """A run failed on purpose, as the task's failure_rate asked."""


def register_handler(task_type: str) -> Callable[[TaskHandler], TaskHandler]:
    def register(handler: TaskHandler) -> TaskHandler:
        HANDLERS[task_type] = handler
        return handler

    return register


async def simulate_work(run: ClaimedRun) -> None:
    """Sleep for the task's execution_time, then fail with the task's failure_rate."""
    await asyncio.sleep(run.execution_time)
    if run.failure_rate > 0 and random.random() < run.failure_rate:
        raise SimulatedFailure(f"simulated failure (failure_rate={run.failure_rate:g})")


@register_handler("notification")
async def send_notification(run: ClaimedRun) -> None:
    await simulate_work(run)


@register_handler("processing")
async def process_data(run: ClaimedRun) -> None:
    await simulate_work(run)
