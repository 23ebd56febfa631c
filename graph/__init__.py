"""Entity graph and ring detection (referral farms, collusion, pyramids, cash-out)."""
