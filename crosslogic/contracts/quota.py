"""Why a tenant's quota is used up: billing writes the reason (``tenants.quota_reason``),
ext_authz reads it with the key and refuses with OpenAI's quota error and this message."""

from __future__ import annotations

CREDITS_EXHAUSTED = "credits_exhausted"
ALLOWANCE_USED = "allowance_used"
SPEND_CAP_REACHED = "spend_cap_reached"

MESSAGES = {
    CREDITS_EXHAUSTED: "You exceeded your current quota: your prepaid credits are used up. "
    "Add credits to continue.",
    ALLOWANCE_USED: "You exceeded your current quota: this month's free allowance is used up. "
    "Add credits or change your plan to continue.",
    SPEND_CAP_REACHED: "You exceeded your current quota: this month's spend cap is reached. "
    "Raise the cap to continue.",
}
