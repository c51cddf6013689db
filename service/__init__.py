"""The routing service: HTTP API, store, embedder, featurizer, learner."""
