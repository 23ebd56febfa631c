"""Who someone is on the worker's web server and what they may do: three roles, each allowed
what the one below it is, and the identity a request carries (streams/auth.py).

- `viewer`: reads every page and API (PII masked).
- `reviewer`: also writes from the console (claims, labels, suppressions).
- `admin`: also changes the policy, and sees PII unmasked.
"""

from __future__ import annotations

from dataclasses import dataclass

VIEWER = "viewer"
REVIEWER = "reviewer"
ADMIN = "admin"
#: Lowest first: a role may do whatever the ones before it may.
ROLES = (VIEWER, REVIEWER, ADMIN)


def role_at_least(role: str, needed: str) -> bool:
    """Whether `role` may do what `needed` may; an unknown `role` may do nothing, an unknown
    `needed` is a programming error (ValueError)."""
    if needed not in ROLES:
        raise ValueError(f"unknown role {needed!r}: one of {', '.join(ROLES)}")
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Identity:
    """Who made a request: `user` with `role`, authenticated `via` the API token ("token") or
    a console session ("session")."""

    user: str
    role: str
    via: str

    def at_least(self, needed: str) -> bool:
        return role_at_least(self.role, needed)

    @property
    def may_unmask(self) -> bool:
        """Whether pages may show this identity PII (ip, device, card, phone hash) unmasked."""
        return self.role == ADMIN


#: The bearer token's identity: programs may do everything.
API_IDENTITY = Identity("api", ADMIN, "token")
