"""Billing: model prices and ratios, and the quota they turn token counts into."""
