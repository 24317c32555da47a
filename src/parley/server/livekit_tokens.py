"""LiveKit access tokens for a session's room, minted with livekit-api.

Each token is limited to the session's room and one identity, with grants by role: a
user speaks and listens; the agent too, marked as an agent; a supervisor listens
unseen and may send data (whispered guidance), but does not publish audio.
"""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from parley.config import LiveKitSettings


def grants_for(role: str, room: str) -> api.VideoGrants:
    if role == "supervisor":
        return api.VideoGrants(
            room_join=True,
            room=room,
            can_publish=False,
            can_subscribe=True,
            can_publish_data=True,
            hidden=True,
        )
    return api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        agent=role == "agent",
    )


def mint_livekit_token(
    settings: LiveKitSettings, *, room: str, identity: str, role: str, ttl_secs: int
) -> str:
    assert settings.api_key and settings.api_secret, "LiveKit is not configured"
    return (
        api.AccessToken(settings.api_key, settings.api_secret.get_secret_value())
        .with_identity(identity)
        .with_name(f"{role}:{identity}")
        .with_grants(grants_for(role, room))
        .with_ttl(timedelta(seconds=ttl_secs))
        .to_jwt()
    )
