"""Budgets: a pacer that moves λ toward a spend target (soft, learned, published with
the policy's snapshot) and a hard cap that narrows the candidates in the request path
(reserve the estimated cost, settle the actual one); tenants carry both."""
