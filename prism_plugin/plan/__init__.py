"""``prism-plugin plan``: per-GPU memory of a PRISM / SFT training YAML, from models built on the meta device.

``build_plan`` reads the YAML (:mod:`.settings`), builds the policy and discriminator from their configs
without weights (:mod:`.census`), applies one accounting rule per model kind (:mod:`.rules`) and returns a
:class:`Plan` (:mod:`.report`) that prints as a table or JSON.
"""

from prism_plugin.plan.report import Plan, build_plan, format_plan
from prism_plugin.plan.settings import PlanError

__all__ = ["Plan", "PlanError", "build_plan", "format_plan"]
