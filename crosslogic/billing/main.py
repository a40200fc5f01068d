"""The billing process: the access-log consumer, settlement retries, the journal's
reconciliation, the hourly aggregation, the tenants' quota state, the Stripe export (every
BILLING_EXPORT_INTERVAL; off, said once, without STRIPE_SECRET_KEY) and the pipeline gauges.

Every loop retries its own transient failures (Postgres or Redis down); a loop that ends
anyway ends the process with an error, so that its supervisor restarts it instead of
leaving billing alive and idle.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from prometheus_client import CollectorRegistry

from crosslogic.billing.aggregation import AggregationMetrics, Aggregator
from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.exporter import ExportMetrics, StripeExporter, meter_names
from crosslogic.billing.price_store import PriceCache, listen_forever
from crosslogic.billing.quota_store import QuotaKeeper
from crosslogic.billing.recovery import JournalReconciler, RecoveryMetrics, live_boot
from crosslogic.billing.request_metrics import RequestMetrics
from crosslogic.billing.settlement import TokenSettler
from crosslogic.billing.stripe_meter import StripeMeterEvents
from crosslogic.db.connection import connect, create_pool
from crosslogic.journal.store import JournalStore
from crosslogic.lifecycle import run_until_signalled
from crosslogic.redis_client import open_redis
from crosslogic.settings import Settings

APPLICATION_NAME = "crosslogic-billing"  # in pg_stat_activity

log = logging.getLogger(__name__)


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    pool = await create_pool(
        settings, max_size=settings.billing_db_pool, application_name=APPLICATION_NAME
    )
    redis = open_redis(settings, timeout=1.0)
    settler = TokenSettler(redis, registry)
    keeper = QuotaKeeper(pool, registry)
    journal = JournalStore(redis)
    # operators' price changes reload the book at once (NOTIFY); it also reloads on its own
    # every 30 s, which covers a notification lost while the listener reconnects
    prices = PriceCache()
    consumer = AccessLogConsumer(
        pool,
        settings.access_log.resolve(),
        BillingMetrics(registry),
        settler=settler,
        journal=journal,
        prices=prices,
        committed=keeper.mark,
        gateway=settings.gateway_id,
        requests=RequestMetrics(registry, tenants=settings.metrics_tenants),
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
    envoy_admin = f"http://{settings.envoy_admin_host}:{settings.envoy_admin_port}"
    reconciler = JournalReconciler(
        pool,
        consumer,
        journal,
        RecoveryMetrics(registry),
        live=lambda: live_boot(session, envoy_admin, settings.gateway_id),
    )
    aggregator = Aggregator(
        pool, AggregationMetrics(registry), interval=settings.billing_aggregation_interval
    )
    tasks = [
        asyncio.create_task(consumer.run(), name="consumer"),
        asyncio.create_task(consumer.observe_forever(), name="lag-gauges"),
        asyncio.create_task(settler.retry_forever(), name="settlement-retries"),
        asyncio.create_task(reconciler.run(), name="journal-reconciliation"),
        asyncio.create_task(aggregator.run(), name="aggregation"),
        asyncio.create_task(aggregator.observe_forever(), name="aggregation-lag"),
        asyncio.create_task(
            listen_forever(lambda: connect(settings), prices), name="price-notifications"
        ),
        asyncio.create_task(keeper.run(), name="quota"),
    ]
    export_metrics = ExportMetrics(registry)
    export_metrics.present()
    stripe_events = None
    if settings.stripe_secret_key:
        stripe_events = StripeMeterEvents(
            settings.stripe_secret_key, api_base=settings.stripe_api_base
        )
        exporter = StripeExporter(
            pool.acquire, stripe_events, export_metrics, names=meter_names(settings)
        )
        tasks.append(
            asyncio.create_task(
                exporter.run_forever(settings.billing_export_interval), name="stripe-export"
            )
        )
    else:
        log.info("Stripe export is off: STRIPE_SECRET_KEY is not set")
    try:
        # a batch cut short commits nothing: its offset commits with its rows, so it is
        # read again by the next process
        await run_until_signalled(tasks)
    finally:
        if stripe_events is not None:
            await stripe_events.close()
        await session.close()
        redis.close()
        await pool.close()
