"""The OpenAI-compatible gateway: a second front door onto the routing loop. It routes
a chat request (a decision like any other, its propensity logged), calls the chosen
model's upstream, prices the call from its usage and attaches the cost to the
decision; a sampled judge and implicit signals post feedback through the same path as
users. The gateway never learns: the learner stays the single writer."""
