"""The Prefect API, for what a run says about another run (the client is Prefect's own)."""

from __future__ import annotations

from uuid import UUID


def mark_crashed(run_id: str, message: str) -> bool:
    """Set flow run `run_id` CRASHED if the server has it and it is not finished; whether it
    did. Raises what Prefect's client raises (an unknown run, an unreachable server)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(run_id)).state
        if state is None or state.is_final():
            return False
        client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)
    return True
