"""Prometheus metrics of one app instance (its own registry, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "banditroute_requests_total",
            "HTTP requests",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "banditroute_request_seconds",
            "HTTP request latency",
            ["path"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.decisions = Counter(
            "banditroute_decisions_total",
            "Routing decisions",
            ["policy", "model", "degraded"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "banditroute_feedback_total",
            "Feedback by outcome",
            ["policy", "outcome"],
            registry=self.registry,
        )
        self.learner_lag = Gauge(
            "banditroute_learner_lag_seconds",
            "Age of the published snapshot while feedback waits",
            ["policy"],
            registry=self.registry,
        )
        self.feedback_waiting = Gauge(
            "banditroute_feedback_waiting",
            "Feedback events not yet in a snapshot",
            ["policy"],
            registry=self.registry,
        )
        self.expiry_backlog = Gauge(
            "banditroute_expiry_backlog",
            "Decisions past their deadline that the sweep has not closed yet",
            ["policy"],
            registry=self.registry,
        )
        self.decisions_shed = Gauge(
            "banditroute_decisions_shed",
            "Decision records the in-process store dropped (oldest first) to stay under "
            "decision_max_in_memory since start; their feedback gets a 404",
            registry=self.registry,
        )
        self.policy_version = Gauge(
            "banditroute_policy_version",
            "Snapshot version this worker serves",
            ["policy"],
            registry=self.registry,
        )
        # the gateway (service/gateway/)
        self.upstream_calls = Counter(
            "banditroute_upstream_calls_total",
            "Gateway calls to upstream models by outcome (ok, 429, 5xx, timeout, "
            "connect, 4xx, disconnected)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "banditroute_upstream_seconds",
            "Upstream time to first token (ttft: the first chunk of a stream, or the "
            "whole answer) and total time",
            ["model", "phase"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.upstream_cost = Counter(
            "banditroute_upstream_cost_usd_total",
            "USD spent on served calls, priced from their usage",
            ["model"],
            registry=self.registry,
        )
        self.judge = Counter(
            "banditroute_judge_total",
            "Judge grading by outcome (sampled, skipped_budget, skipped_queue, graded, "
            "failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.judge_cost = Counter(
            "banditroute_judge_cost_usd_total",
            "USD spent on judge calls (metered apart from the served calls)",
            registry=self.registry,
        )
        self.machine_feedback = Counter(
            "banditroute_machine_feedback_total",
            "Judge and implicit feedback by source and outcome (applied; superseded: "
            "the event already had its outcome, e.g. a user's; unknown: expired)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.cascades = Counter(
            "banditroute_cascade_total",
            "Cascade arms served, by whether the first answer was escalated",
            ["cascade", "escalated"],
            registry=self.registry,
        )
        self.budget_reserved = Counter(
            "banditroute_budget_reserved_usd_total",
            "USD reserved against tenants' hard caps (estimates, before settlement)",
            ["tenant"],
            registry=self.registry,
        )
        self.budget_refused = Counter(
            "banditroute_budget_refused_total",
            "Requests answered 429 because no candidate fit the tenant's cap",
            ["tenant"],
            registry=self.registry,
        )
        self.budget = Gauge(
            "banditroute_budget_usd",
            "A capped tenant's window: spent (settled), reserved (open), remaining, cap",
            ["tenant", "kind"],
            registry=self.registry,
        )
        self.pacer_lambda = Gauge(
            "banditroute_pacer_lambda",
            "The λ a pacer published (tenant \"\": the policy's own)",
            ["policy", "tenant"],
            registry=self.registry,
        )
        # the mean quality and cost per policy are these over feedback{outcome=accepted}
        self.quality_sum = Counter(
            "banditroute_feedback_quality",
            "Sum of the qualities learned, per policy (over accepted feedback: mean quality)",
            ["policy"],
            registry=self.registry,
        )
        self.cost_sum = Counter(
            "banditroute_feedback_cost_usd",
            "Sum of the costs learned with the qualities, per policy (USD)",
            ["policy"],
            registry=self.registry,
        )
