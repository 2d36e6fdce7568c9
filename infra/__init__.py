"""nextcandle-infra: plan, deploy and inspect the platform's Docker Swarm stacks.

The library never imports invoke: `infra.tasks` is the command-line layer on top of it.
"""
