"""Applications deployed into an environment (`invoke app.deploy`): the team's own compose
file, checked against what an app may do, filled in with what the platform gives it, and
deployed through the platform's own render, per-service hash, deploy and wait.

compose: read, render and check the file (the refusals); fill: what the platform adds;
plan: the stack it becomes; deploy: apply and stop against the swarm.
"""

from infra.apps.compose import APP_LABEL, ENV_LABEL, AppFile, load
from infra.apps.plan import AppPlan, plan_app, stack_name

__all__ = ["APP_LABEL", "ENV_LABEL", "AppFile", "AppPlan", "load", "plan_app", "stack_name"]
