"""Billing: usage records from Envoy's access log, pricing, hourly aggregation, Stripe."""
