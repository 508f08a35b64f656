"""Who may do what at the station: roles, their permitted actions, and the check that refuses the rest.

Operators watch the line, tag images and start/stop it; engineers also retrain, calibrate, promote
models and change settings; admins also manage users. The GUI uses ``allowed`` to grey out controls;
``StationDB`` re-checks the role stored in the database before every change, so a forged ``User``
object cannot widen its rights.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from core.storage.views import User

ROLES: tuple[str, ...] = ("operator", "engineer", "admin")
ACTIONS: tuple[str, ...] = ("tag", "start_stop", "retrain", "calibrate", "promote", "settings", "manage_users")

_OPERATOR = frozenset({"tag", "start_stop"})
_ENGINEER = _OPERATOR | {"retrain", "calibrate", "promote", "settings"}
_ADMIN = _ENGINEER | {"manage_users"}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {"operator": _OPERATOR, "engineer": _ENGINEER, "admin": _ADMIN}


class PermissionDenied(PermissionError):
    """The user's role does not permit the action (or the user is inactive or unknown)."""


def check_role(role: str) -> str:
    """Return ``role`` when it is one of ROLES, else raise ValueError naming the valid ones."""
    if role not in ROLE_PERMISSIONS:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def allowed(user: "User | None", action: str) -> bool:
    """True when ``user`` is active and its role permits ``action``; unknown actions raise ValueError."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if user is None or not user.active:
        return False
    return action in ROLE_PERMISSIONS.get(user.role, frozenset())


def require(user: "User | None", action: str) -> None:
    """Raise PermissionDenied unless ``user`` may perform ``action``."""
    if not allowed(user, action):
        who = "nobody logged in" if user is None else f"user {user.name!r} ({user.role}{'' if user.active else ', inactive'})"
        raise PermissionDenied(f"{who} may not {action.replace('_', ' ')}")
