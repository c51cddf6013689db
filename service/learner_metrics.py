"""/metrics for a standalone learner process (`banditroute learner --metrics-port`):
what its pool member owns and holds, and each of its learners' progress, read from
the pool at every scrape (nothing is counted twice, nothing kept between scrapes)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.learner_pool import LearnerPool


class PoolCollector(Collector):
    def __init__(self, pool: LearnerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.pool
        members = GaugeMetricFamily(
            "banditroute_learner_members", "Live members of the learner pool, as last seen"
        )
        members.add_metric([], len(pool.members))
        yield members
        policies = GaugeMetricFamily(
            "banditroute_learner_policies",
            "Policies of this member: owned (a learner runs for it), holding (its lease held)",
            labels=["state"],
        )
        policies.add_metric(["owned"], len(pool.owned()))
        policies.add_metric(["holding"], len(pool.holding()))
        yield policies
        now = time.time()
        applied = GaugeMetricFamily(
            "banditroute_learner_applied",
            "Feedback events in the policy's state (its snapshot's count plus those since)",
            labels=["policy"],
        )
        version = GaugeMetricFamily(
            "banditroute_learner_version", "The snapshot version last published", labels=["policy"]
        )
        age = GaugeMetricFamily(
            "banditroute_learner_publish_age_seconds",
            "Seconds since this learner last published the policy",
            labels=["policy"],
        )
        backlog = GaugeMetricFamily(
            "banditroute_learner_expiry_backlog",
            "Expired decisions still open after the learner's last sweep",
            labels=["policy"],
        )
        for learner in pool.learners():
            st = learner.stats
            if not st.holds_lease:
                continue
            applied.add_metric([learner.name], st.applied)
            version.add_metric([learner.name], st.version)
            age.add_metric([learner.name], max(0.0, now - st.last_publish))
            backlog.add_metric([learner.name], st.backlog)
        yield from (applied, version, age, backlog)


def serve_metrics(pool: LearnerPool, port: int, host: str = "0.0.0.0") -> CollectorRegistry:
    """Serve the pool's metrics on http://host:port/ (any path) from a thread."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool))
    start_http_server(port, addr=host, registry=registry)
    return registry
