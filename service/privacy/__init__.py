"""Privacy-aware routing: sensitive-data detection before the policy chooses.

`detect` finds identifiers and secrets in a query (entity types and offsets, never
the matched text); `synthetic` generates the labelled set the detector is measured
on (python -m benchmarks.privacy); `rules` and `guard` restrict the candidate models
for what was found.
"""

from service.privacy.detect import ENTITIES, Detector, Finding, PatternDetector

__all__ = ["ENTITIES", "Detector", "Finding", "PatternDetector"]
