"""Scaling recommendations: how many servers a pool needs, by Kubernetes HPA's rule and,
optionally, ahead of a forecast peak. May import the standard library and the kernel only.

``Scaler(settings, clock).recommend(current=..., metric=..., forecast=...)`` applies
``ceil(current * metric / target)`` with HPA's tolerance and its scale-up and
scale-down stabilisation windows; a predictive pool also provisions for the peak of
a ``loadwarden.policy.forecast`` forecast of its total demand within the lead time a
new server needs, which ``LeadTimes`` learns.
"""

from ._lead_times import LeadTimes
from ._scaler import Scaler
from ._types import Recommendation, ScalingSettings

__all__ = ["LeadTimes", "Recommendation", "Scaler", "ScalingSettings"]
